"""Reading and writing shipped optimizers: the manifest, checksummed weights files, ``names``/``load``/``optimizer``.

The manifest (``manifest.json``) maps a name to ``{"file", "sha256", "architecture", "kwargs", "source"}``; the
weights file holds theta as ``flax.serialization`` msgpack bytes. ``load`` reads the file once, verifies its sha256,
builds the architecture from the registry and restores theta into the shapes of ``architecture.init``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
import optax
from flax import serialization

from lopt import checkpoints, registry
from lopt.architectures.base import LearnedOptimizer
from lopt.types import MetaParams

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
MANIFEST = "manifest.json"


class PretrainedError(ValueError):
  """A shipped optimizer that cannot be loaded: unknown name, missing or corrupt weights file, bad manifest."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A shipped optimizer: its architecture and theta, and the manifest entry they came from."""

  name: str
  architecture: LearnedOptimizer
  theta: MetaParams
  entry: Mapping[str, Any]

  def optimizer(self, *, num_steps: int, **options: Any) -> optax.GradientTransformationExtraArgs:
    """The optax transformation for a run of ``num_steps`` inner steps.

    ``options`` go to the architecture's ``optimizer``: e.g. ``learning_rate=`` or ``schedule=`` for ``celo2``
    optimizers (``celo2_v1``), which take the step size from the user's schedule.
    """
    return self.architecture.optimizer(self.theta, num_steps=num_steps, **options)


def _manifest(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, MANIFEST)
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except FileNotFoundError:
    return {}
  except (OSError, json.JSONDecodeError) as e:
    raise PretrainedError(f"Cannot read the pretrained manifest {path}: {e}") from e
  if not isinstance(manifest, dict):
    raise PretrainedError(f"The pretrained manifest {path} is not a JSON object.")
  return manifest


def names(directory: str = PACKAGE_DIR) -> list[str]:
  """The names of the shipped optimizers, sorted."""
  return sorted(_manifest(directory))


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def load(name: str, *, directory: str = PACKAGE_DIR) -> Pretrained:
  """The shipped optimizer ``name`` (architecture + theta), its weights file verified against the manifest.

  Raises:
    PretrainedError: naming the file, for an unknown name, a missing weights file, a checksum mismatch (truncated
      or corrupt file), or a theta that does not fit the architecture.
  """
  manifest = _manifest(directory)
  if name not in manifest:
    hint = registry.closest(name, list(manifest))
    raise PretrainedError(f"No pretrained optimizer named {name!r}; shipped: {', '.join(sorted(manifest)) or 'none'}."
                          + (f" Did you mean {hint!r}?" if hint else ""))
  entry = manifest[name]
  path = os.path.join(directory, entry["file"])
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise PretrainedError(f"The weights file of pretrained optimizer {name!r} is missing or unreadable: {path} "
                          f"({e.strerror}); reinstall lopt.") from e
  if _sha256(data) != entry["sha256"]:
    raise PretrainedError(f"The weights file of pretrained optimizer {name!r} is corrupt: {path} does not match the "
                          f"sha256 in {os.path.join(directory, MANIFEST)}; reinstall lopt.")
  architecture = registry.lookup("architecture", entry["architecture"])(**entry.get("kwargs", {}))
  # Concrete values even when called inside a jit trace (e.g. an optimizer built in a jitted training function).
  with jax.ensure_compile_time_eval():
    target = jax.tree.map(np.asarray, architecture.init(jax.random.key(0)))
  try:
    theta = checkpoints.fit_to_target(path, target, serialization.msgpack_restore(data))
  except (checkpoints.CheckpointError, ValueError) as e:
    raise PretrainedError(f"The weights file {path} does not fit architecture {entry['architecture']} "
                          f"{entry.get('kwargs', {})}: {e}") from e
  return Pretrained(name=name, architecture=architecture, theta=theta, entry=entry)


def optimizer(name: str, *, num_steps: int, **options: Any) -> optax.GradientTransformationExtraArgs:
  """``load(name).optimizer(num_steps=num_steps, **options)``: an ordinary optax transformation."""
  return load(name).optimizer(num_steps=num_steps, **options)


def save(name: str, *, architecture: str, kwargs: Mapping[str, Any], theta: MetaParams,
         source: Mapping[str, Any], directory: str = PACKAGE_DIR) -> str:
  """Writes ``<name>.msgpack`` and its manifest entry into ``directory``; returns the weights file's path.

  ``architecture`` and ``kwargs`` must rebuild the optimizer theta was trained for (checked by loading it back).
  """
  file_name = f"{name}.msgpack"
  data = serialization.to_bytes(jax.tree.map(np.asarray, theta))
  path = os.path.join(directory, file_name)
  with open(path, "wb") as f:
    f.write(data)
  manifest = _manifest(directory)
  manifest[name] = {"file": file_name, "sha256": _sha256(data), "architecture": architecture,
                    "kwargs": dict(kwargs), "source": dict(source)}
  with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.write("\n")
  load(name, directory=directory)  # fails now, not at a user's first call
  return path
