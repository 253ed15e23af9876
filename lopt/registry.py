"""The one plugin registry of lopt.

Every plugin kind (task families, task samplers, learned-optimizer architectures, gradient estimators, evaluation
suites) is a
factory registered under ``(kind, name)``. Registration also makes the factory available to gin as
``@<gin module>.<name>`` (e.g. ``@architectures.ff()``) without changing the Python object, so library code never
depends on gin.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Callable, TypeVar

import gin

F = TypeVar("F", bound=Callable)

# kind -> gin module name used in config files.
KINDS: dict[str, str] = {
    "task_family": "task_families",
    "task_sampler": "task_samplers",
    "architecture": "architectures",
    "estimator": "estimators",
    "eval_suite": "eval_suites",
}

_REGISTRY: dict[str, dict[str, Callable]] = {kind: {} for kind in KINDS}


class UnknownPluginError(KeyError):
  """Raised for a plugin name that is not registered."""

  def __str__(self) -> str:  # KeyError would quote the message.
    return str(self.args[0])


def closest(name: str, candidates: list[str]) -> str | None:
  """Returns the candidate most similar to ``name``, or None when nothing is close."""
  matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
  return matches[0] if matches else None


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    hint = closest(kind, list(KINDS))
    suffix = f" Did you mean '{hint}'?" if hint else ""
    raise UnknownPluginError(f"Unknown plugin kind '{kind}'. Kinds: {', '.join(KINDS)}.{suffix}")


def register(kind: str, name: str) -> Callable[[F], F]:
  """Decorator recording a plugin factory under ``(kind, name)`` and with gin.

  Args:
    kind: one of ``KINDS``.
    name: the plugin's name, unique within its kind.

  Returns:
    A decorator that returns the factory unchanged.
  """
  _check_kind(kind)

  def decorator(factory: F) -> F:
    if name in _REGISTRY[kind]:
      raise ValueError(f"A {kind} named '{name}' is already registered ({_REGISTRY[kind][name]!r}).")
    _REGISTRY[kind][name] = factory
    gin.register(name, module=KINDS[kind])(factory)
    return factory

  return decorator


def lookup(kind: str, name: str) -> Callable:
  """Returns the factory registered under ``(kind, name)``; lists names and the closest match on a miss."""
  _check_kind(kind)
  plugins = _REGISTRY[kind]
  if name not in plugins:
    hint = closest(name, list(plugins))
    suffix = f" Did you mean '{hint}'?" if hint else ""
    raise UnknownPluginError(
        f"No {kind} named '{name}'. Registered: {', '.join(sorted(plugins)) or '(none)'}.{suffix}")
  return plugins[name]


def names(kind: str) -> list[str]:
  """Sorted names registered under ``kind``."""
  _check_kind(kind)
  return sorted(_REGISTRY[kind])


def describe(kind: str, name: str) -> str:
  """The first line of a plugin's docstring."""
  doc = inspect.getdoc(lookup(kind, name)) or ""
  return doc.splitlines()[0] if doc else ""


def unregister(kind: str, name: str) -> None:
  """Removes a plugin (for tests that register throw-away plugins)."""
  _check_kind(kind)
  _REGISTRY[kind].pop(name, None)
  # gin has no public unregister; drop the selector so a test can register the name again.
  selector = f"{KINDS[kind]}.{name}"
  if selector in gin.config._REGISTRY:  # pylint: disable=protected-access
    gin.config._REGISTRY.pop(selector)  # pylint: disable=protected-access
