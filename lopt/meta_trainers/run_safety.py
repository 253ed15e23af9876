"""What ``meta_train`` does to a workdir before and after its loop so that no state is lost or misread.

- ``prepare_workdir``: removes what a killed process left half-written (temporary checkpoint files, sidecars of an
  interrupted write, the metrics log's temporary copy). Call it holding the workdir's lock.
- ``restore_state``: the newest verified checkpoint, if there is any checkpoint file at all; one without its
  checksum sidecar is refused with an error naming it (``meta_train.trust_unverified_checkpoints`` to use it),
  never skipped into a fresh start. Metric records after the restored step are dropped (all of them when there is no
  checkpoint: a kill before the first one must not leave its steps in ``metrics.jsonl`` twice).
- ``final_evaluation_once``: resuming a run that is already finished does not repeat its final evaluation unless
  asked; the report it wrote is read back. ``logged_metrics`` likewise reads back its last logged metrics.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from absl import logging

from lopt import checkpoints, writers
from lopt.types import PyTree
from lopt.workdir import Workdir

TRUST_HINT = ("To resume from them anyway, set meta_train.trust_unverified_checkpoints = True (e.g. "
              "--gin_bindings='meta_train.trust_unverified_checkpoints = True'); to start over, use a new --workdir.")


def prepare_workdir(workdir: Workdir) -> list[str]:
  """Removes the leftovers of an interrupted write in ``workdir``; returns their paths."""
  removed = checkpoints.remove_temporary_files(workdir.checkpoints)
  leftover = workdir.metrics + ".tmp"  # writers.truncate_jsonl's temporary copy
  if os.path.isfile(leftover):
    os.remove(leftover)
    removed.append(leftover)
  return removed


def restore_state(workdir: Workdir, state: PyTree, *, main_process: bool, trust_unverified: bool,
                  check: Callable[[PyTree, str], None] | None = None) -> tuple[PyTree, bool]:
  """``(state, restored)``: ``state`` replaced by the workdir's newest verified checkpoint when there is one.

  ``check(raw, path)``, when given, sees the checkpoint as read before it is fitted to ``state``, so it can refuse a
  known mismatch with a readable error (``stability.check_resume``).

  Raises:
    lopt.checkpoints.UnverifiedCheckpointError: a checkpoint without sidecar would be used or skipped; the message
      names the files and says how to proceed.
    lopt.checkpoints.CheckpointError: no checkpoint can be restored (each file named with its reason) or the
      newest does not fit the run's state.
  """
  ckpt_dir = workdir.checkpoints
  restored = False
  if checkpoints.steps_on_disk(ckpt_dir):
    try:
      raw, _, path = checkpoints.read(ckpt_dir, trust_unverified=trust_unverified)
    except checkpoints.UnverifiedCheckpointError as e:
      raise checkpoints.UnverifiedCheckpointError(f"{e} {TRUST_HINT}", e.paths) from e
    if check is not None:
      check(raw, path)
    state = checkpoints.fit_to_target(path, state, raw)
    restored = True
    logging.info("Resuming from step %d in %s", int(state["step"]), ckpt_dir)
  if main_process:
    step = int(state["step"]) if restored else 0
    dropped = writers.truncate_jsonl(workdir.metrics, step)
    if dropped:
      logging.info("Dropped %d metric records logged after step %d; they are computed again.", dropped, step)
  return state, restored


def logged_metrics(workdir: Workdir, step: int) -> dict[str, float]:
  """The training metrics last logged at ``step`` in the workdir's ``metrics.jsonl`` ({} when there are none).

  A resumed run that was already finished runs no step; these are the metrics its result reports, as the
  uninterrupted run's did (not ``{}``).
  """
  if not os.path.isfile(workdir.metrics):
    return {}
  rows = [r for r in writers.read_jsonl(workdir.metrics)
          if r.get("step") == step and not any(k.startswith("meta_eval/") for k in r)]
  if not rows:
    return {}
  return {k: float("nan") if v is None else float(v) for k, v in rows[-1].items() if k != "step"}


def final_evaluation_once(final_evaluation: Callable[..., Any], workdir: Workdir, *, ran_steps: bool,
                          finished_at: int, reevaluate: bool, **kwargs: Any) -> Any:
  """``final_evaluation(workdir=..., **kwargs)``, unless no step ran in this call and its report already exists."""
  if not ran_steps and not reevaluate and os.path.isfile(workdir.final_evaluation):
    logging.info("The run was already finished at step %d; its final evaluation is not repeated (%s). Set "
                 "meta_train.reevaluate = True (--reevaluate) to run it again.", finished_at, workdir.final_evaluation)
    with open(workdir.final_evaluation, encoding="utf-8") as f:
      return json.load(f)
  return final_evaluation(workdir=workdir.root, **kwargs)
