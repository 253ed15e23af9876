"""In-memory data sets with ``train`` / ``outer_valid`` / ``test`` splits: the bundled ones, and ``load`` by name.

The split types and ``sample_batch`` live in ``lopt.tasks.splits`` (re-exported here); files in a directory the
user names are read by ``lopt.tasks.loaders``.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax.numpy as jnp
import numpy as np

from lopt.registry import closest
from lopt.tasks import loaders
from lopt.tasks.splits import Split, Splits, num_classes, sample_batch

__all__ = ["FILE_DATA_SETS", "IMAGE_SHAPES", "LOADERS", "Split", "Splits", "breast_cancer", "digits", "digits_small",
           "image_shape", "load", "num_classes", "sample_batch", "wine"]


DIGITS_SIZES: tuple[int, int, int] = (1197, 300, 300)  # train, outer_valid, test; sums to the 1797 images.


@functools.lru_cache(maxsize=None)
def digits(seed: int = 0) -> Splits:
  """scikit-learn's bundled 8x8 handwritten digits (10 classes, 64 features in [0, 1]); no network needed.

  Args:
    seed: seeds the fixed permutation that assigns images to splits.

  Returns:
    1197 train, 300 outer_valid and 300 test examples. Cached per seed, so building a family twice does not
    reload or re-upload the data.
  """
  # Imported here so that scikit-learn is only needed (and its import time only paid) by users of this data set.
  from sklearn import datasets  # pylint: disable=import-outside-toplevel

  bunch = datasets.load_digits()
  x = (bunch.data / 16.0).astype(np.float32)  # Pixel intensities are integers in [0, 16].
  y = bunch.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(y))
  bounds = np.cumsum(DIGITS_SIZES)[:-1]
  parts = np.split(order, bounds)
  return Splits(*(Split(jnp.asarray(x[idx]), jnp.asarray(y[idx])) for idx in parts))


def _tabular(loader_name: str, seed: int) -> Splits:
  """A scikit-learn bundled tabular data set, features standardised with train statistics, split 60/20/20."""
  from sklearn import datasets  # pylint: disable=import-outside-toplevel

  bunch = getattr(datasets, loader_name)()
  x = bunch.data.astype(np.float32)
  y = bunch.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(y))
  n = len(y)
  parts = np.split(order, [int(0.6 * n), int(0.8 * n)])
  mean, std = x[parts[0]].mean(0), x[parts[0]].std(0) + 1e-6
  x = (x - mean) / std
  return Splits(*(Split(jnp.asarray(x[idx]), jnp.asarray(y[idx])) for idx in parts))


@functools.lru_cache(maxsize=None)
def wine(seed: int = 0) -> Splits:
  """scikit-learn's bundled wine data set (178 examples, 13 features, 3 classes)."""
  return _tabular("load_wine", seed)


@functools.lru_cache(maxsize=None)
def breast_cancer(seed: int = 0) -> Splits:
  """scikit-learn's bundled breast cancer data set (569 examples, 30 features, 2 classes)."""
  return _tabular("load_breast_cancer", seed)


# Data set name -> loader; every loader takes no required arguments and returns ``Splits``.
# Training examples of ``digits_small``: few enough that a 32-unit MLP overfits within a few hundred steps, so
# generalisation (the outer-validation loss) and not training speed decides how good an optimizer is.
DIGITS_SMALL_TRAIN = 100


@functools.lru_cache(maxsize=None)
def digits_small(seed: int = 0) -> Splits:
  """``digits`` with its train split cut to its first ``DIGITS_SMALL_TRAIN`` examples (same validation and test)."""
  full = digits(seed)
  train = Split(full.train.x[:DIGITS_SMALL_TRAIN], full.train.y[:DIGITS_SMALL_TRAIN])
  return Splits(train, full.outer_valid, full.test)


LOADERS: dict[str, Callable[[], Splits]] = {
    "digits": digits,
    "digits_small": digits_small,
    "wine": wine,
    "breast_cancer": breast_cancer,
}

# Data sets read from standard files in a directory the user names (see ``lopt.tasks.loaders``).
FILE_DATA_SETS: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10")

# Image shape (height, width, channels) of each image data set; rows of ``Split.x`` are these images flattened.
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (8, 8, 1),
    "digits_small": (8, 8, 1),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}


def load(name: str, data_dir: str | None = None) -> Splits:
  """Returns the splits of the data set called ``name``.

  Args:
    name: a bundled data set (``LOADERS``) or a file data set (``FILE_DATA_SETS``).
    data_dir: the directory holding a file data set's standard files; unused for bundled data sets.

  Raises:
    ValueError: for an unknown name (listing the supported names and the closest match), or a file data set
      without ``data_dir``.
    FileNotFoundError, lopt.tasks.loaders.DataFileError: for missing or malformed files, naming the file.
  """
  if name in FILE_DATA_SETS:
    if data_dir is None:
      raise ValueError(f"Data set '{name}' is read from local files: pass data_dir, the directory holding them.")
    return loaders.load_directory(name, data_dir)
  if name not in LOADERS:
    supported = sorted([*LOADERS, *FILE_DATA_SETS])
    hint = closest(name, supported)
    suffix = f" Did you mean '{hint}'?" if hint else ""
    raise ValueError(f"Unknown data set '{name}'. Supported: {', '.join(supported)}.{suffix}")
  return LOADERS[name]()


def image_shape(name: str) -> tuple[int, int, int]:
  """The ``(height, width, channels)`` of an image data set; raises ValueError for a non-image data set."""
  if name not in IMAGE_SHAPES:
    raise ValueError(f"'{name}' is not an image data set. Image data sets: {', '.join(sorted(IMAGE_SHAPES))}.")
  return IMAGE_SHAPES[name]
