"""Packaging for lopt. Lower bounds are the versions the test suite was run with."""

import re

from setuptools import find_packages, setup


def _version() -> str:
  """The one version number, ``lopt.__version__``, read without importing the package."""
  with open("lopt/__init__.py", encoding="utf-8") as f:
    return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


setup(
    name="lopt",
    version=_version(),
    license="Apache-2.0",
    description="A JAX research framework for learned optimizers: plugins, gin-configured meta-training, optax "
                "drop-in optimizers.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["lopt", "lopt.*"]),
    # The shipped meta-trained optimizers: weights and their manifest install with the package (no download).
    package_data={"lopt.pretrained": ["manifest.json", "*.msgpack"]},
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "gin-config>=0.5.0",
        "absl-py>=2.5.1",
        "clu>=0.0.12",
        "wandb>=0.31.0",
        "numpy>=2.4",
        "scikit-learn>=1.9",  # bundles the 8x8 digits data set: real data with no download.
        "matplotlib>=3.11",  # evaluation figures (lopt.plots), rendered headless with the Agg backend.
    ],
    extras_require={
        # pytest-xdist: the suite runs one worker per core (pytest.ini); ruff: the lint gate .ci/run applies.
        "test": ["pytest>=9.0", "pytest-xdist>=3.8", "ruff>=0.15"],
        # clu's metric writers (TensorBoard event files) import TensorFlow, which the default install avoids.
        "tensorboard": ["tensorflow-cpu", "tensorboard"],
    },
)
