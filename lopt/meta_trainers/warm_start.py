"""Warm starts: continue a meta-training run in a new workdir from its theta and outer-optimizer state alone.

A warm start is one verified checkpoint (``lopt.checkpoints`` format) holding ``theta``, ``outer_opt_state`` (with
the stability guard's state inside it: its best theta and score, EMAs, learning-rate scale) and ``step``, a few KB.
It is what a run longer than one session commits between sessions: the run's full checkpoints also hold every
inner task's state and are neither small nor meant for the repository.

``meta_train(warm_start=path)`` applies it when the workdir holds no checkpoint yet (a workdir's own checkpoints
always win, so the same command resumes normally after the first checkpoint). The run then counts on from the
exported step, with fresh inner tasks: the truncated unrolls in flight are lost, and their PES accumulators restart
from zero, so the first outer steps see tasks at the start of their horizon again (costs: see docs/reliability.md).
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from lopt import checkpoints
from lopt.types import PyTree

# What a warm start carries; every other entry of a run's checkpoint (the inner task states) starts afresh.
ENTRIES = ("theta", "outer_opt_state")


def export(checkpoint_dir: str, out_dir: str, *, step: int | None = None, trust_unverified: bool = False) -> str:
  """Writes the warm start of ``checkpoint_dir``'s checkpoint ``step`` (default: newest verified) to ``out_dir``.

  Returns the written checkpoint's path. ``out_dir`` keeps only its newest warm start (older ones are removed only
  after the new one is written and verified, as ``checkpoints.save`` does).
  """
  raw, found_step, path = checkpoints.restore_raw(checkpoint_dir, step, trust_unverified=trust_unverified)
  missing = [k for k in ENTRIES if not isinstance(raw, dict) or k not in raw]
  if missing:
    raise checkpoints.CheckpointError(f"Checkpoint {path} has no {missing}; is it a meta_train checkpoint?")
  state = {k: raw[k] for k in ENTRIES}
  state["step"] = np.int64(found_step)
  written = checkpoints.save(out_dir, found_step, state, keep=1)
  logging.info("Wrote the warm start of %s (step %d) to %s", path, found_step, written)
  return written


def apply(path: str, state: PyTree) -> PyTree:
  """``state`` (a fresh run's host state) with theta, outer-optimizer state and step from the warm start ``path``.

  ``path`` is the directory ``export`` wrote. Raises ``CheckpointError`` naming the file when it is missing,
  corrupt, or does not fit the run (another architecture or outer optimizer).
  """
  if not os.path.isdir(path):
    raise checkpoints.CheckpointError(f"Warm start {path} is not a directory (expected the output of "
                                      "experiments/export_warm_start.py).")
  target = {k: state[k] for k in ENTRIES}
  target["step"] = state["step"]
  restored, step = checkpoints.restore(path, target)
  logging.info("Warm start from %s: theta and outer-optimizer state of step %d; inner tasks start afresh.", path, step)
  return {**state, **{k: restored[k] for k in ENTRIES}, "step": np.int64(step)}
