"""VeLO's speed-up metric on synthetic learning curves with known answers, and its edge cases."""

import numpy as np
import pytest

from lopt.evaluation import speedup


def _line(start, slope, n):
  return start + slope * np.arange(n)


def test_known_speedups():
  learned = _line(1.0, -0.05, 11)  # reaches 0.5 after 10 updates
  assert speedup.speedup(learned, _line(1.0, -0.05, 21), window=1).value == pytest.approx(1.0)
  slower = speedup.speedup(learned, _line(1.0, -0.025, 41), window=1)  # reaches 0.5 after 20 updates
  assert slower.value == pytest.approx(2.0)
  assert (slower.baseline_steps, slower.learned_steps, slower.target) == (20, 10, pytest.approx(0.5))
  assert not (slower.lower_bound or slower.reached_at_start or slower.learned_diverged)
  assert slower.label() == "2.00x"
  faster = speedup.speedup(learned, _line(1.0, -0.1, 11), window=1)  # reaches 0.5 after 5
  assert faster.value == pytest.approx(0.5)


def test_fastest_of_a_grid_counts():
  learned = _line(1.0, -0.05, 11)
  grid = np.stack([np.full(41, 0.9), _line(1.0, -0.025, 41), _line(1.0, -0.0125, 41)])
  result = speedup.speedup(learned, grid, window=1)
  assert (result.value, result.baseline_index, result.baseline_steps) == (pytest.approx(2.0), 1, 20)


def test_never_reached_is_a_lower_bound_at_the_budget_ratio():
  learned = _line(1.0, -0.05, 11)
  result = speedup.speedup(learned, np.full(31, 0.9), window=1)  # 30 updates of budget, 10 learned steps
  assert result.lower_bound and result.baseline_steps is None and result.baseline_index is None
  assert result.value == pytest.approx(3.0)
  assert result.label() == ">3.00x"


def test_reached_at_step_zero():
  learned = _line(1.0, 0.02, 11)  # the learned optimizer made the loss worse: 1.2 at the end
  result = speedup.speedup(learned, _line(1.0, -0.01, 21), window=1)
  assert result.reached_at_start and result.value == 0.0 and result.baseline_steps == 0
  assert not result.lower_bound


def test_diverged_learned_and_baseline():
  learned = _line(1.0, -0.05, 11)
  learned[-1] = np.nan
  result = speedup.speedup(learned, _line(1.0, -0.05, 21), window=1)
  assert result.learned_diverged and result.value == 0.0
  # A baseline that dips below the target only after it has produced a NaN never counts as reaching it.
  baseline = _line(1.0, -0.05, 21)
  clean = speedup.speedup(_line(1.0, -0.05, 11), baseline, window=5)
  assert clean.target == pytest.approx(0.6) and clean.baseline_steps == 10  # identical curves: speed-up 1
  baseline[8] = np.nan  # its window stays +inf up to step 12; at 13 the mean of steps 9..13 is 0.45
  assert speedup.speedup(_line(1.0, -0.05, 11), baseline, window=5).baseline_steps == 13


def test_smoothing_matches_a_direct_trailing_mean():
  rng = np.random.default_rng(0)
  curve = rng.uniform(0, 1, 37)
  smoothed = speedup.smooth(curve, 4)
  expected = [np.mean(curve[max(0, t - 3):t + 1]) for t in range(37)]
  np.testing.assert_allclose(smoothed, expected, rtol=1e-12)
  # Batched along the last axis, and +inf spreads over the window after a non-finite entry.
  grid = np.stack([curve, curve * 2])
  np.testing.assert_allclose(speedup.smooth(grid, 4)[1], 2 * smoothed, rtol=1e-12)
  curve[10] = np.nan
  smoothed = speedup.smooth(curve, 4)
  assert np.all(np.isinf(smoothed[10:14])) and np.all(np.isfinite(smoothed[:10])) and np.isfinite(smoothed[14])


def test_smoothing_changes_the_step_count_of_a_noisy_curve():
  learned = np.full(11, 0.5)
  learned[0] = 1.0
  baseline = np.array([1.0, 0.4] + [0.6] * 9 + [0.45] * 10)  # one lucky minibatch at step 1
  assert speedup.speedup(learned, baseline, window=1).baseline_steps == 1
  assert speedup.speedup(learned, baseline, window=3).baseline_steps > 1


def test_best_final_and_summary():
  grid = np.stack([np.full(5, 0.3), np.full(5, 0.2), np.full(5, 0.2), np.array([1, 1, 1, 1, np.nan])])
  assert speedup.best_final(grid, window=1) == 1  # ties go to the first; NaN is never best
  assert speedup.best_final(np.stack([np.array([1, 0.1, 1.0]), np.array([1, 0.5, 0.5])]), window=1, at=1) == 0
  results = [speedup.SpeedUp(2.0, 0.1, 10, 20, 0), speedup.SpeedUp(0.5, 0.1, 10, 5, 0),
             speedup.SpeedUp(1.0, 0.1, 10, None, None, lower_bound=True)]
  summary = speedup.summarize(results)
  assert summary["geometric_mean"] == pytest.approx(1.0)
  assert summary["median"] == pytest.approx(1.0)
  assert summary["fraction_faster"] == pytest.approx(2 / 3)  # the >1.00x lower bound counts as faster
  assert summary["fraction_lower_bound"] == pytest.approx(1 / 3)


def test_bad_input():
  with pytest.raises(ValueError, match="window"):
    speedup.smooth(np.ones(3), 0)
  with pytest.raises(ValueError, match="at least 2"):
    speedup.speedup(np.ones(1), np.ones(5), window=1)
  with pytest.raises(ValueError, match="grid"):
    speedup.speedup(np.ones(5), np.ones((2, 2, 2)), window=1)
