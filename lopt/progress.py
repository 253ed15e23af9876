"""Rate and ETA of long loops (meta-training steps, evaluations, sweep runs), and progress lines for them."""

from __future__ import annotations

import time
from typing import Callable


def format_seconds(seconds: float) -> str:
  """``42s``, ``3m05s``, ``1h02m``; ``?`` when unknown."""
  if seconds != seconds or seconds == float("inf"):
    return "?"
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
  """Counts finished units of ``total`` and prints ``[done/total] what | 1.2 units/s | elapsed | ETA``.

  The ETA assumes the remaining units cost what the finished ones did on average.
  """

  def __init__(self, total: int, *, unit: str = "runs", printer: Callable[[str], None] = print,
               clock: Callable[[], float] = time.perf_counter):
    self.total = total
    self.done = 0
    self._unit = unit
    self._print = printer
    self._clock = clock
    self._start = clock()

  def rate(self) -> float:
    """Units per second so far (0 before the first one)."""
    elapsed = self._clock() - self._start
    return self.done / elapsed if elapsed > 0 else 0.0

  def eta(self) -> float:
    """Seconds left at the current rate (inf before the first unit)."""
    rate = self.rate()
    return (self.total - self.done) / rate if rate > 0 else float("inf")

  def advance(self, count: int = 1) -> None:
    """Marks ``count`` more units done without printing."""
    self.done += count

  def step(self, what: str, count: int = 1) -> str:
    """Marks ``count`` units done, prints and returns the progress line."""
    self.advance(count)
    elapsed = self._clock() - self._start
    line = (f"[{self.done}/{self.total}] {what} | {self.rate():.2f} {self._unit}/s | "
            f"elapsed {format_seconds(elapsed)} | ETA {format_seconds(self.eta())}")
    self._print(line)
    return line
