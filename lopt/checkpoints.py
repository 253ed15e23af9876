"""Checkpoint persistence: msgpack files written with ``flax.serialization``.

A checkpoint of step N is ``checkpoint_{N:08d}.msgpack`` plus a sidecar ``checkpoint_{N:08d}.json`` holding the
step and the sha256 of the msgpack bytes. Both are written atomically (temporary file in the same directory, fsync,
``os.replace``), the sidecar last, so a checkpoint is complete exactly when its sidecar exists. ``restore`` takes
the newest checkpoint whose checksum verifies and falls back to older ones, with a warning, when the newest is
corrupt or incomplete.

State is any pytree that ``flax.serialization`` handles (dicts, lists, NamedTuples such as optax states, flax
structs) with array or python-scalar leaves. It is restored against a *target* of the same structure (the freshly
initialised state, or ``jax.eval_shape`` of it); leaves come back as numpy arrays with the target's dtypes, ready
for the caller to place on devices.

PRNG keys: typed key arrays (``jax.random.key``) cannot be serialised. Store their raw data instead,
``jax.random.key_data(key)`` (uint32), and rebuild with ``jax.random.wrap_key_data`` after restoring; ``save``
refuses typed keys with a TypeError. Arrays must be fully addressable by this process (save from the main process
after gathering).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile

from absl import logging
from flax import serialization
import jax
import numpy as np

from lopt.types import PyTree

_CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)\.msgpack$")


class CheckpointError(ValueError):
  """A checkpoint cannot be restored (missing, corrupt, or not matching the target)."""


def checkpoint_path(directory: str, step: int) -> str:
  """Path of the msgpack file of ``step``."""
  return os.path.join(directory, f"checkpoint_{step:08d}.msgpack")


def _sidecar_path(directory: str, step: int) -> str:
  return os.path.join(directory, f"checkpoint_{step:08d}.json")


def ensure_writable_dir(path: str) -> None:
  """Creates ``path`` if needed and checks that files can be written there.

  Raises:
    ValueError: naming ``path`` when it cannot be created or written to.
  """
  try:
    os.makedirs(path, exist_ok=True)
    # Permission bits do not tell (root ignores them, read-only mounts do not show); try a real write.
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise ValueError(f"Directory '{path}' is not writable: {e}") from e


def _fsync_dir(directory: str) -> None:
  """Makes a rename in ``directory`` durable (not supported on every platform)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _atomic_write(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` so readers see either the old file or the whole new one."""
  directory = os.path.dirname(path) or "."
  fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise
  _fsync_dir(directory)


def _steps_on_disk(directory: str) -> list[int]:
  """Steps that have a msgpack file (complete or not), ascending."""
  if not os.path.isdir(directory):
    return []
  steps = []
  for name in os.listdir(directory):
    match = _CHECKPOINT_RE.match(name)
    if match:
      steps.append(int(match.group(1)))
  return sorted(steps)


def _check_no_typed_keys(state: PyTree) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      raise TypeError(f"Cannot checkpoint the typed PRNG key at {jax.tree_util.keystr(path)}; store "
                      "jax.random.key_data(key) instead and rebuild it with jax.random.wrap_key_data.")


def _remove(step: int, directory: str) -> None:
  for path in (checkpoint_path(directory, step), _sidecar_path(directory, step)):
    if os.path.exists(path):
      os.remove(path)


def save(directory: str, step: int, state: PyTree, *, keep: int = 3) -> str:
  """Writes the checkpoint of ``step`` and prunes old ones.

  Checkpoints of steps later than ``step`` belong to an abandoned continuation (the run was resumed from an
  earlier checkpoint) and are deleted, so that "newest" always means "last written"; of the rest, only the
  newest ``keep`` are kept.

  Args:
    directory: the checkpoint directory; created if missing.
    step: the step number, >= 0.
    state: the pytree to save (no typed PRNG keys; see the module docstring).
    keep: how many checkpoints to keep, >= 1.

  Returns:
    The path of the msgpack file.
  """
  if keep < 1:
    raise ValueError(f"keep must be >= 1, got {keep}.")
  if step < 0:
    raise ValueError(f"step must be >= 0, got {step}.")
  step = int(step)
  _check_no_typed_keys(state)
  os.makedirs(directory, exist_ok=True)
  data = serialization.to_bytes(state)
  path = checkpoint_path(directory, step)
  _atomic_write(path, data)
  sidecar = {"step": step, "sha256": hashlib.sha256(data).hexdigest(), "num_bytes": len(data)}
  _atomic_write(_sidecar_path(directory, step), json.dumps(sidecar).encode("utf-8"))

  steps = _steps_on_disk(directory)
  abandoned = [s for s in steps if s > step]
  if abandoned:
    logging.warning("Deleting checkpoints of steps %s in %s: they are later than the newly saved step %d.",
                    abandoned, directory, step)
  kept = [s for s in steps if s <= step][-keep:]
  for old_step in steps:
    if old_step not in kept:
      _remove(old_step, directory)
  return path


def latest_step(directory: str) -> int | None:
  """The newest step whose checkpoint is complete (its sidecar exists), or None; checksums are not verified."""
  complete = [s for s in _steps_on_disk(directory) if os.path.exists(_sidecar_path(directory, s))]
  return complete[-1] if complete else None


def _read_verified(directory: str, step: int) -> bytes:
  """Returns the bytes of checkpoint ``step``; raises CheckpointError if they do not match the sidecar."""
  path = checkpoint_path(directory, step)
  try:
    with open(_sidecar_path(directory, step), encoding="utf-8") as f:
      sidecar = json.load(f)
    with open(path, "rb") as f:
      data = f.read()
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"Cannot read checkpoint {path}: {e}") from e
  if not isinstance(sidecar, dict) or sidecar.get("step") != step:
    raise CheckpointError(f"Sidecar of checkpoint {path} does not describe step {step}.")
  if hashlib.sha256(data).hexdigest() != sidecar.get("sha256"):
    raise CheckpointError(f"Checksum mismatch for checkpoint {path} (truncated or corrupt).")
  return data


def _fit_to_target(path: str, target: PyTree, raw: PyTree) -> PyTree:
  """Restores the raw state dict into ``target``'s structure, checking structure and shapes."""
  target_dict = serialization.to_state_dict(target)
  if jax.tree.structure(target_dict) != jax.tree.structure(raw):
    raise CheckpointError(f"Checkpoint {path} does not match the target structure:\n"
                          f"  checkpoint: {jax.tree.structure(raw)}\n  target:     {jax.tree.structure(target_dict)}")
  try:
    restored = serialization.from_state_dict(target, raw)
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"Checkpoint {path} does not match the target structure: {e}") from e

  def fit(key_path, want, got):
    if not hasattr(want, "shape") or not hasattr(want, "dtype"):
      return got  # Python scalars and other plain leaves come back as stored.
    got = np.asarray(got)
    if got.shape != tuple(want.shape):
      raise CheckpointError(f"Checkpoint {path}: leaf {jax.tree_util.keystr(key_path)} has shape {got.shape}, "
                            f"the target expects {tuple(want.shape)}.")
    return got.astype(want.dtype, copy=False)

  return jax.tree_util.tree_map_with_path(fit, target, restored)


def _read_newest(directory: str, step: int | None) -> tuple[PyTree, int, str]:
  """The raw state dict of ``step`` (or of the newest checkpoint that verifies), its step and its path."""
  available = _steps_on_disk(directory)
  if step is not None:
    if step not in available:
      raise CheckpointError(f"No checkpoint of step {step} in {directory}; available steps: {available}.")
    candidates = [step]
  else:
    candidates = available[::-1]
  if not candidates:
    raise CheckpointError(f"No checkpoints in {directory}.")
  tried = []
  for candidate in candidates:
    path = checkpoint_path(directory, candidate)
    try:
      return serialization.msgpack_restore(_read_verified(directory, candidate)), candidate, path
    except Exception as e:  # pylint: disable=broad-except  # msgpack raises several unrelated types.
      logging.warning("Skipping checkpoint %s: %s", path, e)
      tried.append(f"{path} ({e})")
  raise CheckpointError(f"No checkpoint in {directory} could be restored; tried: {'; '.join(tried)}.")


def restore(directory: str, target: PyTree, step: int | None = None) -> tuple[PyTree, int]:
  """Restores a checkpoint into the structure of ``target``.

  Args:
    directory: the checkpoint directory.
    target: a pytree with the saved structure (arrays or ``jax.ShapeDtypeStruct`` leaves give shapes and dtypes).
    step: the step to restore; by default the newest one that verifies, falling back to older ones.

  Returns:
    ``(state, step)``.

  Raises:
    CheckpointError: when no checkpoint can be restored, naming the files tried and why, or when a verified
      checkpoint does not fit ``target``.
  """
  raw, step, path = _read_newest(directory, step)
  return _fit_to_target(path, target, raw), step


def restore_entry(directory: str, name: str, target: PyTree, step: int | None = None) -> tuple[PyTree, int]:
  """Restores one top-level entry of a checkpointed dict (e.g. ``"theta"``) into ``target``'s structure.

  The file is read and verified once; the rest of the state (inner task states, outer optimizer) is never fitted,
  so a caller needs no target for it.

  Raises:
    CheckpointError: as ``restore``, or when the checkpoint has no entry ``name``.
  """
  raw, step, path = _read_newest(directory, step)
  if not isinstance(raw, dict) or name not in raw:
    keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
    raise CheckpointError(f"Checkpoint {path} has no '{name}' (it holds {keys}); is it a meta_train checkpoint?")
  return _fit_to_target(path, target, raw[name]), step
