"""Checks of the arguments a user gives a plugin factory or ``meta_train``: type and range, one clear line each.

Every check names the argument the way a gin binding spells it (``estimators.pes.num_tasks``), says what is wrong
and what is allowed, and raises ``ArgumentError``; the entry points print its message as ``error: <message>``.
Checks return the value converted to its plain Python type (an ``int`` given as ``8.0`` is refused, a ``float``
given as ``1`` becomes ``1.0``), so gin's literal parsing never decides what a factory receives.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence


class ArgumentError(ValueError):
  """An argument of the wrong type or out of range; ``name`` is the argument as a gin binding spells it."""

  def __init__(self, name: str, problem: str):
    self.name = name
    self.problem = problem
    super().__init__(f"{name}: {problem}")


def _got(value: Any) -> str:
  return f"got {value!r} ({type(value).__name__})"


def _range(minimum: float | None, maximum: float | None, open_minimum: bool, open_maximum: bool = False) -> str:
  parts = []
  if minimum is not None:
    parts.append(f"{'>' if open_minimum else '>='} {minimum:g}")
  if maximum is not None:
    parts.append(f"{'<' if open_maximum else '<='} {maximum:g}")
  return " and ".join(parts)


def integer(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
  """``value`` as an ``int`` within ``[minimum, maximum]``; bools and non-integral numbers are refused."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    allowed = _range(minimum, maximum, False)
    # gin reads 1e3 and 10.0 as floats: say how to write the integer meant.
    integral_float = isinstance(value, float) and math.isfinite(value) and value.is_integer()
    hint = f"; write it as {int(value)} (1e3 and 1000.0 are floats)" if integral_float else ""
    raise ArgumentError(name, f"must be an integer{' ' + allowed if allowed else ''}, {_got(value)}{hint}.")
  value = int(value)
  if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
    raise ArgumentError(name, f"must be an integer {_range(minimum, maximum, False)}, got {value}.")
  return value


def real(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
         open_minimum: bool = False, open_maximum: bool = False) -> float:
  """``value`` as a finite ``float`` within the range; ``open_minimum``/``open_maximum`` exclude the bound itself."""
  allowed = _range(minimum, maximum, open_minimum, open_maximum)
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ArgumentError(name, f"must be a number{' ' + allowed if allowed else ''}, {_got(value)}.")
  value = float(value)
  too_small = minimum is not None and (value <= minimum if open_minimum else value < minimum)
  too_large = maximum is not None and (value >= maximum if open_maximum else value > maximum)
  if not math.isfinite(value) or too_small or too_large:
    raise ArgumentError(name, f"must be a finite number{' ' + allowed if allowed else ''}, got {value:g}.")
  return value


def optional_real(name: str, value: Any, **kwargs: Any) -> float | None:
  """``None`` or ``real(name, value, **kwargs)``."""
  return None if value is None else real(name, value, **kwargs)


def optional_integer(name: str, value: Any, **kwargs: Any) -> int | None:
  """``None`` or ``integer(name, value, **kwargs)``."""
  return None if value is None else integer(name, value, **kwargs)


def boolean(name: str, value: Any) -> bool:
  """``value`` if it is a ``bool`` (``True``/``False`` in gin), refusing ``0``, ``1`` and strings."""
  if not isinstance(value, bool):
    raise ArgumentError(name, f"must be True or False, {_got(value)}.")
  return value


def choice(name: str, value: Any, options: Sequence[str]) -> str:
  """``value`` if it is one of ``options``."""
  if not isinstance(value, str) or value not in options:
    raise ArgumentError(name, f"must be one of {', '.join(repr(o) for o in options)}, {_got(value)}.")
  return value


def integers(name: str, values: Any, *, minimum: int | None = None, allow_empty: bool = True) -> tuple[int, ...]:
  """A sequence of integers (e.g. hidden sizes) as a tuple, each checked like ``integer``."""
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
    raise ArgumentError(name, f"must be a tuple of integers, {_got(values)}.")
  if not allow_empty and not values:
    raise ArgumentError(name, "must not be empty.")
  return tuple(integer(f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(values))


def reals(name: str, values: Any, *, minimum: float | None = None, maximum: float | None = None,
          open_minimum: bool = False, open_maximum: bool = False, allow_empty: bool = True) -> tuple[float, ...]:
  """A sequence of numbers (e.g. decays) as a tuple of floats, each checked like ``real``."""
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
    raise ArgumentError(name, f"must be a tuple of numbers, {_got(values)}.")
  if not allow_empty and not values:
    raise ArgumentError(name, "must not be empty.")
  return tuple(real(f"{name}[{i}]", v, minimum=minimum, maximum=maximum, open_minimum=open_minimum,
                    open_maximum=open_maximum) for i, v in enumerate(values))
