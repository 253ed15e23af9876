"""Outer steps whose every task is masked: logged as such, warned about, and stopped after too many in a row.

An estimator masks a task whose loss diverged (non-finite, above ``max_loss``) or whose parameters became
non-finite; its ``meta_loss`` is then the mean over the *valid* tasks, and 0 when none is valid, with a zero
meta-gradient. A step with every task masked has therefore no meta-loss at all, and theta learns nothing from it.
``MaskedSteps`` finds such steps (``masked_tasks`` equal to the number of task slots of the family's estimator
state), leaves their meta-loss and gradient norm out of the logged averages, counts them in ``fully_masked_steps``,
warns at the first of a streak and sets ``error`` (a ``FullyMaskedError`` for the loop to log and raise) after
``limit`` in a row.

The ``masked_tasks`` scalar of a step is read only after the next step is dispatched, so this adds no device sync.
"""

from __future__ import annotations

import collections
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from lopt.meta_trainers.unroll import TaskState
from lopt.types import PyTree

# Metrics without meaning on a fully masked step: the meta-loss of no task, the norm of a zero gradient.
_UNDEFINED = ("meta_loss", "grad_norm")


class FullyMaskedError(ValueError):
  """Too many consecutive outer steps had every task masked."""


def task_slots(estimator_state: PyTree) -> int:
  """Task slots of an estimator state: the length of the task axis of each ``TaskState`` in it, summed.

  That is the largest ``masked_tasks`` lopt's estimators report (0 for a state without ``TaskState``: then fully
  masked steps cannot be told and are not looked for).
  """
  nodes = jax.tree.leaves(estimator_state, is_leaf=lambda node: isinstance(node, TaskState))
  return int(sum(np.shape(node.step)[-1] for node in nodes if isinstance(node, TaskState) and np.ndim(node.step)))


def _undefined(name: str) -> bool:
  return name.split("/")[-1] in _UNDEFINED


def summarize(window: list[tuple[Mapping[str, Any], bool]]) -> dict[str, float]:
  """The logged averages of a window of ``(metrics, fully_masked)`` steps.

  The meta-loss and gradient norm average over the steps that had a valid task only, and are left out when there is
  none; ``fully_masked_steps`` counts the others (present only when there are some).
  """
  masked = sum(flag for _, flag in window)
  out = {}
  for name in window[0][0]:
    values = [float(m[name]) for m, flag in window if not (flag and _undefined(name))]
    if values:
      out[name] = float(np.mean(values))
  if masked:
    out["fully_masked_steps"] = float(masked)
  return out


class MaskedSteps:
  """Tracks fully masked outer steps (see the module docstring).

  Args:
    slots: task slots per family name (``task_slots``).
    limit: consecutive fully masked steps that stop the run; 0 never stops it.
  """

  def __init__(self, slots: Mapping[str, int], limit: int):
    self._slots = dict(slots)
    self._limit = limit
    self._queue: collections.deque = collections.deque()  # [step, family, metrics, flag or None]
    self._streak: list[int] = []
    self.error: FullyMaskedError | None = None  # set once ``limit`` fully masked steps came in a row

  def push(self, step: int, family: str, metrics: Mapping[str, Any]) -> None:
    """Records the metrics of ``step`` (1-based); resolves the steps before it."""
    self._resolve(keep_last=True)
    self._queue.append([step, family, metrics, None])

  def take(self) -> list[tuple[Mapping[str, Any], bool]]:
    """Resolves and returns the steps pushed since the last ``take`` as ``(metrics, fully_masked)``."""
    self._resolve(keep_last=False)
    entries = list(self._queue)
    self._queue.clear()
    return [(metrics, flag) for _, _, metrics, flag in entries]

  def _resolve(self, keep_last: bool) -> None:
    for entry in list(self._queue)[:-1] if keep_last else list(self._queue):
      if entry[3] is None:
        entry[3] = self._check(*entry[:3])

  def _check(self, step: int, family: str, metrics: Mapping[str, Any]) -> bool:
    slots = self._slots.get(family, 0)
    fully = bool(slots) and "masked_tasks" in metrics and int(metrics["masked_tasks"]) >= slots
    if not fully:
      self._streak = []
      return False
    self._streak.append(step)
    if len(self._streak) == 1:
      logging.warning("Outer step %d: all %d tasks of %s were masked (diverged, non-finite or loss above max_loss): "
                      "no meta-loss, no meta-gradient. It is logged without meta_loss and grad_norm%s.", step,
                      slots, family, f"; {self._limit} such steps in a row stop the run" if self._limit else "")
    if self._limit and len(self._streak) >= self._limit and self.error is None:
      self.error = FullyMaskedError(
          f"meta_train.max_fully_masked_steps: outer steps {self._streak[0]}-{self._streak[-1]} "
          f"({len(self._streak)} in a row) had every task masked, so theta is not learning. Lower the learning "
          "rate, the initial step or the perturbation std, or raise the estimator's max_loss. Their metrics are "
          "logged; no checkpoint of them is written, the last one is kept.")
    return True
