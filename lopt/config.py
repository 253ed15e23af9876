"""Gin at the edges: registers the top-level functions and parses configs with errors that help.

Plugin factories register themselves with gin through ``lopt.registry``; this module adds the few top-level
functions a run file configures (``meta_train``, the outer optimizer, the final and the periodic evaluation) and parses config files
and bindings strictly: a missing file, an unknown configurable or an unknown parameter is an error that names the
problem and, where one exists, the closest registered name. Nothing is ever skipped.
"""

from __future__ import annotations

import importlib.util  # noqa: F401  gin uses importlib.util without importing it.
import inspect
import os
import re
from typing import Sequence

import gin

import lopt.architectures  # noqa: F401  registers the plugins.
import lopt.meta_trainers  # noqa: F401
import lopt.tasks  # noqa: F401
from lopt import evaluation, registry
from lopt.meta_trainers import outer_loop

EDGE_FUNCTIONS = {
    "meta_train": outer_loop.meta_train,
    "meta_optimizer": outer_loop.default_meta_optimizer,
    "heldout_comparison": evaluation.heldout_comparison,
    "periodic_meta_eval": evaluation.periodic_meta_eval,
}
for _name, _fn in EDGE_FUNCTIONS.items():
  gin.register(_name)(_fn)


class ConfigError(ValueError):
  """A gin config file or binding that cannot be used as written."""


def configurables() -> dict[str, object]:
  """Every name gin files can refer to: ``module.name`` for plugins and the bare edge functions."""
  names = dict(EDGE_FUNCTIONS)
  for kind, module in registry.KINDS.items():
    for name in registry.names(kind):
      names[f"{module}.{name}"] = registry.lookup(kind, name)
  return names


def _suggest(name: str, candidates: Sequence[str]) -> str:
  hint = registry.closest(name, list(candidates))
  if hint is None and "." in name:  # compare the last component too: "architecture.ff" vs "architectures.ff"
    short = {c.split(".")[-1]: c for c in candidates}
    hint = short.get(registry.closest(name.split(".")[-1], list(short)) or "")
  return f" Did you mean '{hint}'?" if hint else ""


def _explain(error: Exception) -> str:
  message = str(error)
  known = configurables()
  match = re.search(r"No configurable matching (?:reference )?'@?([^'(]+)(?:\(\))?'", message)
  if match:
    return (f"Unknown configurable '{match.group(1)}'.{_suggest(match.group(1), list(known))} "
            f"Run `python experiments/list_plugins.py` for every registered name.\n{message}")
  match = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", message)
  if match:
    target = known.get(match.group(1)) or known.get(match.group(1).split(".")[-1])
    params = list(inspect.signature(target).parameters) if target else []
    return (f"'{match.group(1)}' has no parameter '{match.group(2)}'.{_suggest(match.group(2), params)} "
            f"Its parameters: {', '.join(params)}.\n{message}")
  return message


def parse(config_files: Sequence[str] = (), bindings: Sequence[str] = ()) -> None:
  """Parses gin files then bindings (later ones override earlier ones); raises ``ConfigError`` on any problem."""
  for path in config_files:
    if not os.path.isfile(path):
      raise ConfigError(f"Gin config file '{path}' does not exist.")
  try:
    gin.parse_config_files_and_bindings(list(config_files), list(bindings), skip_unknown=False,
                                        finalize_config=False)
  except (ValueError, KeyError, TypeError, SyntaxError, IOError) as e:
    raise ConfigError(_explain(e)) from e


def configured(name: str):
  """The gin-configured version of an edge function (its bindings applied when called)."""
  return gin.get_configurable(EDGE_FUNCTIONS[name])
