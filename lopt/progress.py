"""Rate and ETA of long loops (meta-training steps, evaluations, sweep runs), and progress lines for them."""

from __future__ import annotations

import collections
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

  Two ways to estimate what is left:

  - ``window``: the rate of the last ``window`` units, measured from the end of the first unit on. The first unit
    of a compiled loop includes its compilation (often longer than hundreds of steps), so an average from the start
    would overstate the time left for most of a run; a moving window also follows a rate that changes.
  - ``total_work`` (units of unequal cost, e.g. a short learned-optimizer run and a long baseline grid): each
    ``step`` says how much work it was, and the ETA is the work left at the average rate of work so far.

  Without either, the ETA assumes the remaining units cost what the finished ones did on average.
  """

  def __init__(self, total: int, *, unit: str = "runs", printer: Callable[[str], None] = print,
               clock: Callable[[], float] = time.perf_counter, window: int | None = None,
               total_work: float | None = None):
    if window is not None and window < 1:
      raise ValueError(f"window must be >= 1, got {window}.")
    self.total = total
    self.done = 0
    self._unit = unit
    self._print = printer
    self._clock = clock
    self._start = clock()
    # (time, units done) after each advance; the oldest drops out once ``window`` units separate it from the newest.
    self._marks: collections.deque[tuple[float, int]] = collections.deque(maxlen=(window or 0) + 1)
    self._window = window
    self._total_work = total_work
    self._work_done = 0.0

  def elapsed(self) -> float:
    """Seconds since the start."""
    return self._clock() - self._start

  def rate(self) -> float:
    """Units per second: over the window once two units are done (else since the start); 0 before any."""
    if self._window is not None and len(self._marks) >= 2:
      (t0, d0), (t1, d1) = self._marks[0], self._marks[-1]
      if t1 > t0:
        return (d1 - d0) / (t1 - t0)
    elapsed = self.elapsed()
    return self.done / elapsed if elapsed > 0 else 0.0

  def eta(self) -> float:
    """Seconds left (inf before the first unit)."""
    if self._total_work is not None:
      elapsed = self.elapsed()
      if self._work_done <= 0 or elapsed <= 0:
        return float("inf")
      return max(self._total_work - self._work_done, 0.0) * elapsed / self._work_done
    rate = self.rate()
    return (self.total - self.done) / rate if rate > 0 else float("inf")

  def advance(self, count: int = 1, *, work: float | None = None) -> None:
    """Marks ``count`` more units (and ``work``, with ``total_work``) done without printing."""
    self.done += count
    self._work_done += count if work is None else work
    if self._window is not None:
      self._marks.append((self._clock(), self.done))

  def line(self, what: str) -> str:
    """The progress line for the units done so far."""
    return (f"[{self.done}/{self.total}] {what} | {self.rate():.2f} {self._unit}/s | "
            f"elapsed {format_seconds(self.elapsed())} | ETA {format_seconds(self.eta())}")

  def step(self, what: str, count: int = 1, *, work: float | None = None) -> str:
    """Marks ``count`` units done, prints and returns the progress line."""
    self.advance(count, work=work)
    line = self.line(what)
    self._print(line)
    return line

  def starting(self, what: str) -> str:
    """Prints (and returns) that a unit starts, so a long one is not minutes of silence."""
    line = f"[{self.done + 1}/{self.total}] {what} ... (elapsed {format_seconds(self.elapsed())})"
    self._print(line)
    return line
