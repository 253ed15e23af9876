"""VeLO's speed-up metric: how many more steps a tuned baseline needs to match a learned optimizer.

Conventions (all curves are mean normalised training losses over seeds, one entry per inner step):

- Entry ``t`` of a curve is the loss after ``t`` updates, so a curve of ``n`` entries spans ``n - 1`` updates.
- Curves are smoothed by a trailing moving average of ``window`` entries before anything is compared, so one lucky
  minibatch does not decide a step count. Non-finite entries (a diverged run) count as +inf.
- The *target* is the learned optimizer's smoothed loss at its last entry; its step count is ``n - 1``.
- The baseline's step count is the first ``t`` at which its smoothed curve is at or below the target. Over a grid of
  learning rates the fastest one counts, which favours the baseline (a conservative speed-up).
- ``speedup = baseline steps / learned steps``. Three edge cases are flagged rather than hidden:

  * never reached within the baseline's budget of ``m`` entries: ``speedup = (m - 1) / (n - 1)`` with
    ``lower_bound=True`` (the true value is larger; printed as ``>x``);
  * reached at step 0 (the learned optimizer ended no lower than where every run starts):
    ``speedup = 0`` with ``reached_at_start=True``;
  * a non-finite target (the learned optimizer diverged): ``speedup = 0`` with ``learned_diverged=True``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class SpeedUp:
  """The speed-up of a learned optimizer over a baseline on one task (see the module docstring)."""

  value: float
  target: float
  learned_steps: int
  baseline_steps: int | None  # None: never reached within the budget
  baseline_index: int | None  # which curve of the grid reached the target first
  lower_bound: bool = False
  reached_at_start: bool = False
  learned_diverged: bool = False

  def label(self) -> str:
    """``1.73x``, ``>2.00x`` for a lower bound."""
    return f"{'>' if self.lower_bound else ''}{self.value:.2f}x"


def clean(curve: np.ndarray) -> np.ndarray:
  """The curve as float64 with NaN and +-inf mapped to +inf (a diverged run never reaches anything)."""
  curve = np.asarray(curve, np.float64)
  return np.where(np.isfinite(curve), curve, np.inf)


def smooth(curve: np.ndarray, window: int) -> np.ndarray:
  """Trailing moving average over the last ``window`` entries (fewer at the start); +inf stays +inf.

  Args:
    curve: shape (..., n); the average runs along the last axis.
    window: entries averaged, >= 1 (1 returns the cleaned curve).
  """
  if window < 1:
    raise ValueError(f"window must be >= 1, got {window}.")
  curve = clean(curve)
  if window == 1:
    return curve
  bad = ~np.isfinite(curve)
  values = np.where(bad, 0.0, curve)
  zeros = np.zeros(curve.shape[:-1] + (1,))
  sums = np.concatenate([zeros, np.cumsum(values, axis=-1)], axis=-1)
  bad_counts = np.concatenate([zeros, np.cumsum(bad, axis=-1)], axis=-1)
  n = curve.shape[-1]
  end = np.arange(1, n + 1)
  start = np.maximum(end - window, 0)
  mean = (sums[..., end] - sums[..., start]) / (end - start)
  return np.where(bad_counts[..., end] - bad_counts[..., start] > 0, np.inf, mean)


def steps_to_reach(curve: np.ndarray, target: float) -> int | None:
  """The first index of ``curve`` at or below ``target``, or None when it never gets there."""
  hits = np.flatnonzero(clean(curve) <= target)
  return int(hits[0]) if hits.size else None


def default_window(num_steps: int) -> int:
  """The smoothing window used by default: 5% of the learned optimizer's steps, at least 1."""
  return max(1, num_steps // 20)


def speedup(learned: np.ndarray, baselines: np.ndarray | Sequence[np.ndarray], *, window: int) -> SpeedUp:
  """The speed-up of the learned optimizer over the fastest of ``baselines`` (see the module docstring).

  Args:
    learned: the learned optimizer's mean training-loss curve, shape (n,) with n >= 2.
    baselines: one curve (m,) or a grid of curves (k, m), e.g. Adam at k learning rates; m may differ from n.
    window: smoothing window in entries.

  Returns:
    A ``SpeedUp``.
  """
  learned = np.asarray(learned)
  grid = np.atleast_2d(np.asarray(baselines))
  if learned.ndim != 1 or learned.shape[0] < 2:
    raise ValueError(f"learned must be one curve of at least 2 entries, got shape {learned.shape}.")
  if grid.ndim != 2 or grid.shape[1] < 1:
    raise ValueError(f"baselines must be a curve or a (k, m) grid of curves, got shape {grid.shape}.")
  learned_steps = learned.shape[0] - 1
  budget = grid.shape[1] - 1
  target = float(smooth(learned, window)[-1])
  if not np.isfinite(target):
    return SpeedUp(value=0.0, target=target, learned_steps=learned_steps, baseline_steps=None, baseline_index=None,
                   learned_diverged=True)
  smoothed = smooth(grid, window)
  steps = [steps_to_reach(curve, target) for curve in smoothed]
  reached = [(s, i) for i, s in enumerate(steps) if s is not None]
  if not reached:
    return SpeedUp(value=budget / learned_steps, target=target, learned_steps=learned_steps, baseline_steps=None,
                   baseline_index=None, lower_bound=True)
  best_steps, best_index = min(reached)
  return SpeedUp(value=best_steps / learned_steps, target=target, learned_steps=learned_steps,
                 baseline_steps=best_steps, baseline_index=best_index, reached_at_start=best_steps == 0)


def best_final(curves: np.ndarray, *, window: int, at: int | None = None) -> int:
  """Index of the curve of a grid with the lowest smoothed loss at entry ``at`` (default: the last); ties: first.

  This is the tuning criterion of the baselines: the learning rate with the lowest final training loss.
  """
  smoothed = smooth(np.atleast_2d(curves), window)
  column = smoothed[:, -1 if at is None else at]
  return int(np.argmin(column))


def summarize(speedups: Sequence[SpeedUp]) -> dict[str, float]:
  """Across tasks: geometric mean and median, and the fraction of tasks where the learned optimizer is faster.

  Lower bounds enter at their bound (so both averages are lower bounds when any task has one); a speed-up of 0
  enters the geometric mean as 1e-3.
  """
  values = np.array([s.value for s in speedups], np.float64)
  if values.size == 0:
    return {}
  positive = np.maximum(values, 1e-3)
  faster = [s.value > 1.0 or (s.lower_bound and s.value >= 1.0) for s in speedups]
  return {"geometric_mean": float(np.exp(np.mean(np.log(positive)))), "median": float(np.median(values)),
          "fraction_faster": float(np.mean(faster)),
          "fraction_lower_bound": float(np.mean([s.lower_bound for s in speedups]))}
