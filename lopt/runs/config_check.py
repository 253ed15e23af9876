"""A run directory belongs to one configuration: resuming it with bindings that change what its checkpoint means is
refused, naming the bindings that differ.

The *state-defining* bindings are ``meta_train``'s ``architecture``, ``estimator``, ``task_sampler`` and ``seed``,
and every parameter of every configurable they reach (``@task_families.image_mlp()`` inside a sampler, the parts of
``estimators.combined``, ...), with macros resolved and unbound parameters at their defaults, so an operative
``config.gin`` (every parameter listed) and a short gin file compare by effect, not by spelling. Everything else
(``num_outer_steps``, logging, checkpoint cadence, evaluations, the outer optimizer's hyperparameters) may change
between runs of one workdir.
"""

from __future__ import annotations

import inspect
from typing import Any

import gin

from lopt import config

STATE_ROOTS = ("architecture", "estimator", "task_sampler", "seed")
_UNBOUND = "<unbound>"


class ConfigMismatchError(config.ConfigError):
  """The config of a resumed run differs from the workdir's own in a state-defining binding."""


Snapshot = dict[tuple[str, str], dict[str, Any]]


def snapshot() -> Snapshot:
  """A copy of gin's current bindings, ``{(scope, selector): {parameter: value}}``."""
  return {key: dict(values) for key, values in gin.config._CONFIG.items()}  # pylint: disable=protected-access


def snapshot_of_file(path: str) -> Snapshot:
  """The bindings of the gin file ``path``, parsed on a private copy of gin's state."""
  with config.isolated():
    gin.clear_config()
    config.parse([path])
    return snapshot()


def _lookup(bindings: Snapshot, scope: str, selector: str, param: str) -> tuple[bool, Any]:
  """The binding of ``param`` as gin resolves it: the innermost enclosing scope first, unscoped last."""
  parts = scope.split("/") if scope else []
  for i in range(len(parts), -1, -1):
    values = bindings.get(("/".join(parts[:i]), selector), {})
    if param in values:
      return True, values[param]
  return False, None


def _canonical(bindings: Snapshot, value: Any, reached: list) -> Any:
  """``value`` with macros replaced by their values and references by a fixed spelling (collected in ``reached``)."""
  if isinstance(value, gin.config.ConfigurableReference):
    if value.configurable.wrapped is gin.config.macro:
      found, macro_value = _lookup(bindings, "/".join(value.scopes), "gin.macro", "value")
      return _canonical(bindings, macro_value, reached) if found else f"%{'/'.join(value.scopes)}"
    reached.append(("/".join(value.scopes), value.configurable))
    return f"@{'/'.join([*value.scopes, value.configurable.selector])}{'()' if value.evaluate else ''}"
  if isinstance(value, (list, tuple)):
    return type(value)(_canonical(bindings, v, reached) for v in value)
  if isinstance(value, dict):
    return {k: _canonical(bindings, v, reached) for k, v in value.items()}
  return value


def _display(scope: str, configurable: Any, param: str) -> str:
  name = configurable.name if configurable.selector.startswith("lopt.") else configurable.selector
  return f"{scope + '/' if scope else ''}{name}.{param}"


def _effective(bindings: Snapshot, scope: str, configurable: Any, params: Any, reached: list) -> dict[str, Any]:
  signature = inspect.signature(configurable.wrapped)
  out = {}
  for param in params:
    found, value = _lookup(bindings, scope, configurable.selector, param)
    if not found:
      default = signature.parameters[param].default
      value = _UNBOUND if default is inspect.Parameter.empty else default
    out[_display(scope, configurable, param)] = _canonical(bindings, value, reached)
  return out


def state_bindings(bindings: Snapshot) -> dict[str, Any]:
  """The state-defining bindings of ``bindings`` (see the module docstring), by display name."""
  meta_train = gin.config._REGISTRY.get_match("meta_train")  # pylint: disable=protected-access
  reached: list = []
  out = _effective(bindings, "", meta_train, STATE_ROOTS, reached)
  seen = set()
  while reached:
    scope, configurable = reached.pop(0)
    if (scope, configurable.selector) in seen:
      continue
    seen.add((scope, configurable.selector))
    params = [name for name, p in inspect.signature(configurable.wrapped).parameters.items()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    out.update(_effective(bindings, scope, configurable, params, reached))
  return out


def differences(recorded: Snapshot, current: Snapshot) -> list[str]:
  """``name: <recorded> in the run's config, <current> now`` for each state-defining binding that differs.

  A configurable reached by only one side is covered by the reference that differs; its parameters are not listed.
  """
  old, new = state_bindings(recorded), state_bindings(current)
  return [f"{name}: {old[name]!r} in the run's config, {new[name]!r} now" for name in old
          if name in new and old[name] != new[name]]


def check_resume(config_path: str, current: Snapshot, workdir: str) -> None:
  """Raises ``ConfigMismatchError`` when ``current`` changes a state-defining binding of the run's ``config_path``."""
  diffs = differences(snapshot_of_file(config_path), current)
  if diffs:
    raise ConfigMismatchError(
        f"{workdir} holds checkpoints of another configuration; these bindings change what its checkpoints mean: "
        f"{'; '.join(diffs)}. Use a new --workdir for the new configuration, or resume with the run's own "
        f"(--gin_config={config_path}). Nothing in {workdir} was changed.")
