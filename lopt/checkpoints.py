"""Checkpoint persistence: msgpack files written with ``flax.serialization``.

A checkpoint of step N is ``checkpoint_{N:08d}.msgpack`` plus a sidecar ``checkpoint_{N:08d}.json`` holding the
step and the sha256 of the msgpack bytes. Both are written atomically (temporary file in the same directory, fsync,
``os.replace``), the sidecar *first*: a write cut short leaves at most a sidecar without its msgpack (an incomplete
write, removed by ``remove_temporary_files``), never a msgpack without its sidecar. A msgpack without a sidecar is
therefore *unverifiable* (e.g. a copy of the directory without its ``.json`` files): ``restore`` refuses it with an
``UnverifiedCheckpointError`` naming the files, unless ``trust_unverified=True``, and ``save`` never deletes it while
no newer verified checkpoint exists. ``restore`` takes the newest checkpoint whose checksum verifies and falls back to
older ones, with a warning, when the newest is corrupt (its checksum does not match).

No checkpoint is deleted unless a newer verified one exists: ``save`` prunes only checkpoints older than the newest
``keep`` verified ones, and moves checkpoints later than the saved step (an abandoned continuation) into
``abandoned/`` instead of deleting them. A failed write (disk full, read-only) raises ``CheckpointWriteError`` and
leaves every earlier checkpoint as it was.

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


ABANDONED = "abandoned"  # subdirectory for checkpoints of an abandoned continuation (never deleted automatically)
_TMP_PREFIX = ".tmp_"


class CheckpointError(ValueError):
  """A checkpoint cannot be restored (missing, corrupt, or not matching the target)."""


class UnverifiedCheckpointError(CheckpointError):
  """Checkpoints without a checksum sidecar stand where a restore would use or skip them; ``paths`` names them."""

  def __init__(self, message: str, paths: list[str]):
    super().__init__(message)
    self.paths = paths


class CheckpointWriteError(OSError):
  """Writing a checkpoint failed (disk full, read-only, ...); the earlier checkpoints are intact."""


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


def atomic_write(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` so readers see either the old file or the whole new one."""
  directory = os.path.dirname(path) or "."
  fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=_TMP_PREFIX, suffix=os.path.basename(path))
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
  """Steps that have a msgpack file (verifiable or not), ascending."""
  if not os.path.isdir(directory):
    return []
  steps = []
  for name in os.listdir(directory):
    match = _CHECKPOINT_RE.match(name)
    if match:
      steps.append(int(match.group(1)))
  return sorted(steps)


def steps_on_disk(directory: str) -> list[int]:
  """Every step with a checkpoint file in ``directory``, verifiable or not, ascending (checksums not read)."""
  return _steps_on_disk(directory)


def unverified_steps(directory: str) -> list[int]:
  """Steps whose msgpack has no checksum sidecar, ascending: they cannot be verified."""
  return [s for s in _steps_on_disk(directory) if not os.path.exists(_sidecar_path(directory, s))]


def remove_temporary_files(directory: str) -> list[str]:
  """Removes what an interrupted ``save`` left in ``directory``: temporary files and sidecars without a msgpack.

  Call it only while no other process writes there (``lopt.locks``). Returns the removed paths.
  """
  if not os.path.isdir(directory):
    return []
  removed = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    orphan = re.match(r"^checkpoint_(\d+)\.json$", name)
    if name.startswith(_TMP_PREFIX) or (orphan and not os.path.exists(checkpoint_path(directory,
                                                                                      int(orphan.group(1))))):
      if os.path.isfile(path):
        os.remove(path)
        removed.append(path)
  if removed:
    logging.info("Removed %d file(s) left by an interrupted checkpoint write: %s", len(removed), removed)
  return removed


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


def _move_aside(step: int, directory: str) -> None:
  """Moves checkpoint ``step`` (and its sidecar) into ``<directory>/abandoned/``."""
  target = os.path.join(directory, ABANDONED)
  os.makedirs(target, exist_ok=True)
  for path in (checkpoint_path(directory, step), _sidecar_path(directory, step)):
    if os.path.exists(path):
      os.replace(path, os.path.join(target, os.path.basename(path)))


def _write_checkpoint(directory: str, step: int, data: bytes) -> str:
  """Writes sidecar then msgpack of ``step``; on failure restores the previous sidecar and raises."""
  path, sidecar_path = checkpoint_path(directory, step), _sidecar_path(directory, step)
  previous_sidecar = None
  if os.path.exists(sidecar_path):
    with open(sidecar_path, "rb") as f:
      previous_sidecar = f.read()
  sidecar = {"step": step, "sha256": hashlib.sha256(data).hexdigest(), "num_bytes": len(data)}
  try:
    atomic_write(sidecar_path, json.dumps(sidecar).encode("utf-8"))
    atomic_write(path, data)
    if os.path.getsize(path) != len(data):
      raise OSError(f"{path} holds {os.path.getsize(path)} bytes after writing {len(data)}")
  except OSError as e:
    try:  # leave the step as it was: its old sidecar (if any) describes its old msgpack
      if previous_sidecar is not None:
        atomic_write(sidecar_path, previous_sidecar)
      elif os.path.exists(sidecar_path) and not os.path.exists(path):
        os.remove(sidecar_path)
    except OSError:
      pass
    intact = latest_step(directory)
    kept = (f"the newest intact checkpoint is step {intact}" if intact is not None
            else "there is no earlier checkpoint")
    raise CheckpointWriteError(f"Could not write the checkpoint of step {step} to {directory}: {e}. Nothing was "
                               f"deleted; {kept}.") from e
  return path


def save(directory: str, step: int, state: PyTree, *, keep: int = 3) -> str:
  """Writes the checkpoint of ``step`` and prunes old ones.

  Checkpoints of steps later than ``step`` belong to an abandoned continuation (the run was resumed from an
  earlier checkpoint) and are moved into ``<directory>/abandoned/``, so that "newest" always means "last written";
  of the rest, checkpoints older than the newest ``keep`` verified ones are deleted (none while there are fewer).
  Nothing else is deleted: an unverifiable checkpoint newer than those stays.

  Args:
    directory: the checkpoint directory; created if missing.
    step: the step number, >= 0.
    state: the pytree to save (no typed PRNG keys; see the module docstring).
    keep: how many checkpoints to keep, >= 1.

  Returns:
    The path of the msgpack file.

  Raises:
    CheckpointWriteError: when the write fails; earlier checkpoints are left as they were.
  """
  if keep < 1:
    raise ValueError(f"keep must be >= 1, got {keep}.")
  if step < 0:
    raise ValueError(f"step must be >= 0, got {step}.")
  step = int(step)
  _check_no_typed_keys(state)
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise CheckpointWriteError(f"Could not create the checkpoint directory {directory}: {e}.") from e
  data = serialization.to_bytes(state)
  path = _write_checkpoint(directory, step, data)

  steps = _steps_on_disk(directory)
  abandoned = [s for s in steps if s > step]
  if abandoned:
    logging.warning("Moving checkpoints of steps %s in %s to %s/: they are later than the newly saved step %d "
                    "(an abandoned continuation). Nothing is deleted.", abandoned, directory, ABANDONED, step)
    for later in abandoned:
      _move_aside(later, directory)
  verified = [s for s in steps if s <= step and os.path.exists(_sidecar_path(directory, s))]
  if len(verified) >= keep:  # delete only what ``keep`` newer verified checkpoints stand in front of
    for old_step in steps:
      if old_step < verified[-keep]:
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


def fit_to_target(path: str, target: PyTree, raw: PyTree) -> PyTree:
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


def _unverified_message(directory: str, steps: list[int]) -> str:
  names = ", ".join(os.path.basename(checkpoint_path(directory, s)) for s in steps)
  return (f"Cannot verify the checkpoint(s) {names} in {directory}: their checksum sidecars "
          f"(checkpoint_<step>.json) are missing, e.g. the directory was copied without its .json files. Nothing "
          f"was deleted or skipped.")


def _read_unverified(directory: str, step: int) -> bytes:
  path = checkpoint_path(directory, step)
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise CheckpointError(f"Cannot read checkpoint {path}: {e}") from e


def _read_newest(directory: str, step: int | None, trust_unverified: bool = False) -> tuple[PyTree, int, str]:
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
  unverified = set(unverified_steps(directory))
  tried = []
  for candidate in candidates:
    path = checkpoint_path(directory, candidate)
    if candidate in unverified and not trust_unverified:
      # Skipping it would resume from an older state (or start afresh) and later delete it: refuse instead.
      steps = sorted(unverified)
      raise UnverifiedCheckpointError(_unverified_message(directory, steps),
                                      [checkpoint_path(directory, s) for s in steps])
    try:
      if candidate in unverified:
        logging.warning("Restoring %s without verifying it: its checksum sidecar is missing (trusted).", path)
        data = _read_unverified(directory, candidate)
      else:
        data = _read_verified(directory, candidate)
      return serialization.msgpack_restore(data), candidate, path
    except Exception as e:  # pylint: disable=broad-except  # msgpack raises several unrelated types.
      logging.warning("Skipping checkpoint %s: %s", path, e)
      tried.append(f"{path} ({e})")
  raise CheckpointError(f"No checkpoint in {directory} could be restored; tried: {'; '.join(tried)}.")


def read(directory: str, step: int | None = None, *, trust_unverified: bool = False) -> tuple[PyTree, int, str]:
  """``(raw state dict, step, path)`` of a checkpoint, chosen and verified as by ``restore``, not yet fitted to a
  target (``fit_to_target``): for callers that look at what a checkpoint holds before fitting it."""
  return _read_newest(directory, step, trust_unverified)


def restore(directory: str, target: PyTree, step: int | None = None, *,
            trust_unverified: bool = False) -> tuple[PyTree, int]:
  """Restores a checkpoint into the structure of ``target``.

  Args:
    directory: the checkpoint directory.
    target: a pytree with the saved structure (arrays or ``jax.ShapeDtypeStruct`` leaves give shapes and dtypes).
    step: the step to restore; by default the newest one that verifies, falling back to older corrupt ones.
    trust_unverified: restore checkpoints without a checksum sidecar instead of refusing them.

  Returns:
    ``(state, step)``.

  Raises:
    UnverifiedCheckpointError: when a checkpoint without a sidecar would be used or skipped (unless trusted).
    CheckpointError: when no checkpoint can be restored, naming the files tried and why, or when a verified
      checkpoint does not fit ``target``.
  """
  raw, step, path = _read_newest(directory, step, trust_unverified)
  return fit_to_target(path, target, raw), step


def restore_raw(directory: str, step: int | None = None, *,
                trust_unverified: bool = False) -> tuple[PyTree, int, str]:
  """The raw state dict of ``step`` (default: the newest checkpoint that verifies), its step and its path.

  For callers that copy part of a checkpoint without building the full target (``warm_start.export``).
  """
  return _read_newest(directory, step, trust_unverified)


def restore_entry(directory: str, name: str, target: PyTree, step: int | None = None, *,
                  trust_unverified: bool = False) -> tuple[PyTree, int]:
  """Restores one top-level entry of a checkpointed dict (e.g. ``"theta"``) into ``target``'s structure.

  The file is read and verified once; the rest of the state (inner task states, outer optimizer) is never fitted,
  so a caller needs no target for it.

  Raises:
    CheckpointError: as ``restore``, or when the checkpoint has no entry ``name``.
  """
  raw, step, path = _read_newest(directory, step, trust_unverified)
  if not isinstance(raw, dict) or name not in raw:
    keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
    raise CheckpointError(f"Checkpoint {path} has no '{name}' (it holds {keys}); is it a meta_train checkpoint?")
  return fit_to_target(path, target, raw[name]), step
