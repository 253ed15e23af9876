"""Progress lines: rates and ETAs that do not count the first (compiling) step, and units of unequal cost."""

import pytest

from lopt import progress


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


def test_window_rate_ignores_the_compiling_first_step():
  clock = FakeClock()
  tracker = progress.Progress(1000, unit="steps", clock=clock, window=50, printer=lambda line: None)
  clock.now += 30.0  # the first step compiles
  tracker.advance()
  for _ in range(49):
    clock.now += 0.1
    tracker.advance()
  # 50 steps done in 34.9 s; the 49 after the first took 4.9 s: 10 steps/s, 950 left.
  assert tracker.rate() == pytest.approx(10.0)
  assert tracker.eta() == pytest.approx(95.0)
  # (An average from the start would say 950 / (50 / 34.9 s) = 663 s.)


def test_window_follows_a_changing_rate():
  clock = FakeClock()
  tracker = progress.Progress(400, unit="steps", clock=clock, window=20, printer=lambda line: None)
  for _ in range(100):
    clock.now += 1.0
    tracker.advance()
  for _ in range(20):
    clock.now += 0.25
    tracker.advance()
  # Only the last 20 steps count: 4 steps/s, 280 steps left.
  assert tracker.rate() == pytest.approx(4.0)
  assert tracker.eta() == pytest.approx(70.0)


def test_before_the_second_step_the_estimate_is_the_average_or_unknown():
  clock = FakeClock()
  tracker = progress.Progress(10, clock=clock, window=5, printer=lambda line: None)
  assert tracker.rate() == 0.0 and tracker.eta() == float("inf")
  clock.now = 2.0
  tracker.advance()
  assert tracker.rate() == pytest.approx(0.5) and tracker.eta() == pytest.approx(18.0)


def test_work_weighted_eta_for_units_of_unequal_cost():
  clock = FakeClock()
  lines = []
  # Per task: a learned run (100 steps of work) then a baseline grid (10 lanes x 1,000 steps), 100 work units/s.
  tracker = progress.Progress(4, unit="programs", clock=clock, total_work=2 * (100 + 10_000), printer=lines.append)
  clock.now += 1.0
  tracker.step("a: learned", work=100)
  # 20,000 units left at 100/s; counting programs would say 3 more at 1 s each.
  assert tracker.eta() == pytest.approx(201.0)
  clock.now += 100.0
  tracker.step("a: baselines", work=10_000)
  assert tracker.eta() == pytest.approx(101.0)
  assert lines[-1].startswith("[2/4] a: baselines |") and lines[-1].endswith("ETA 1m41s")


def test_starting_line_names_the_next_unit():
  lines = []
  tracker = progress.Progress(3, clock=FakeClock(), printer=lines.append)
  tracker.step("first")
  assert tracker.starting("second, 8 tasks x 200 steps").startswith("[2/3] second, 8 tasks x 200 steps ...")
  assert len(lines) == 2


def test_format_seconds():
  assert [progress.format_seconds(s) for s in (4.4, 65, 3720, float("inf"))] == ["4s", "1m05s", "1h02m", "?"]
