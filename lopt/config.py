"""Gin at the edges: registers the top-level functions and parses configs with errors that help.

Plugin factories register themselves with gin through ``lopt.registry``; this module adds the few top-level
functions a run file configures (``meta_train``, the outer optimizer, the final and the periodic evaluation) and
parses config files and bindings strictly: a missing file, an unknown configurable or an unknown parameter is an
error that names the problem and, where one exists, the closest registered name. Nothing is ever skipped.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util  # noqa: F401  gin uses importlib.util without importing it.
import inspect
import os
import re
import tokenize
from typing import Iterator, Sequence

import gin

import lopt.architectures  # noqa: F401  registers the plugins.
import lopt.evaluation  # noqa: F401
import lopt.meta_trainers  # noqa: F401
import lopt.tasks  # noqa: F401
from lopt import registry
from lopt.evaluation import hooks
from lopt.meta_trainers import outer_loop, stability

EDGE_FUNCTIONS = {
    "meta_train": outer_loop.meta_train,
    "meta_optimizer": outer_loop.default_meta_optimizer,
    "heldout_comparison": hooks.heldout_comparison,
    "periodic_meta_eval": hooks.periodic_meta_eval,
    "stability_guard": stability.stability_guard,
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


VALUE_FORMS = ("a number, a quoted string, True/False/None, a tuple or list, @name() or %MACRO")


def _explain_syntax(error: SyntaxError) -> str:
  """Names the binding or file line gin could not read, and what a value may be."""
  line = (error.text or "").strip()
  where = f"{error.filename}, line {error.lineno}" if error.filename else "gin binding"
  token = re.search(r"Failed to parse token '([^']*)'", str(error))
  what = f"cannot read {token.group(1)!r} as a value" if token else (error.msg or "").splitlines()[0].rstrip(".")
  # gin's own text ("malformed node or string ... <ast.Name object at 0x...>") says nothing a user can act on.
  return f"{where} {line!r}: {what}; a value is {VALUE_FORMS}."


def _explain(error: Exception) -> str:
  if isinstance(error, SyntaxError):
    return _explain_syntax(error)
  if isinstance(error, tokenize.TokenError):
    return (f"gin config: {error.args[0]} (an unclosed bracket or quote in a gin file or binding); a value is "
            f"{VALUE_FORMS}.")
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


def _add_include_root(path: str) -> None:
  """Lets ``include 'gin_configs/...'`` lines resolve from any working directory: the parent of the nearest
  ``gin_configs`` directory above ``path`` becomes a gin search path."""
  directory = os.path.dirname(os.path.abspath(path))
  while directory and os.path.basename(directory) != "gin_configs":
    parent = os.path.dirname(directory)
    if parent == directory:
      return
    directory = parent
  root = os.path.dirname(directory)
  prefixes = gin.config._LOCATION_PREFIXES  # pylint: disable=protected-access
  if root not in prefixes:
    # First, not appended (gin.add_config_file_search_path): gin logs an error for every prefix it tries in vain.
    prefixes.insert(0, root)


def parse(config_files: Sequence[str] = (), bindings: Sequence[str] = ()) -> None:
  """Parses gin files then bindings (later ones override earlier ones); raises ``ConfigError`` on any problem."""
  for path in config_files:
    if os.path.isdir(path):
      raise ConfigError(f"Gin config file '{path}' is a directory; give a .gin file inside it.")
    if not os.path.isfile(path):
      raise ConfigError(f"Gin config file '{path}' does not exist.")
  for path in config_files:
    _add_include_root(path)
  try:
    gin.parse_config_files_and_bindings(list(config_files), list(bindings), skip_unknown=False,
                                        finalize_config=False)
  except (ValueError, KeyError, TypeError, SyntaxError, IOError, tokenize.TokenError) as e:
    raise ConfigError(_explain(e)) from e


def configured(name: str):
  """The gin-configured version of an edge function (its bindings applied when called)."""
  return gin.get_configurable(EDGE_FUNCTIONS[name])


# gin keeps one global configuration; these are the parts a parse or a configured call changes.
_GIN_STATE = ("_CONFIG", "_SINGLETONS", "_IMPORTS", "_OPERATIVE_CONFIG")


def _copy_two_levels(value):
  if isinstance(value, dict):
    return {k: copy.copy(v) for k, v in value.items()}
  return copy.copy(value)


@contextlib.contextmanager
def isolated() -> Iterator[None]:
  """Runs the block on a private copy of gin's global configuration and restores the caller's afterwards.

  Library code that must parse a config of its own (loading a workdir's optimizer, running one configuration of a
  sweep) does so inside this block, so the caller's bindings are neither seen nor lost. The block starts from a
  copy of the caller's configuration; call ``gin.clear_config()`` inside it for a fresh start.
  """
  module = gin.config
  # Two levels: gin binds parameters into the inner per-configurable dicts in place.
  saved = {name: _copy_two_levels(getattr(module, name)) for name in _GIN_STATE}
  saved_locked = module.config_is_locked()
  try:
    yield
  finally:
    for name, value in saved.items():
      current = getattr(module, name)
      current.clear()
      current.update(value)
    module._set_config_is_locked(saved_locked)  # pylint: disable=protected-access


def plugin_listing() -> str:
  """Every registered plugin by kind with its gin name, one-line description and (architectures) meta-parameters."""
  lines = []
  for kind, module in registry.KINDS.items():
    lines.append(f"{kind} (gin: @{module}.NAME())")
    for name in registry.names(kind):
      extra = ""
      if kind == "architecture":
        extra = f" [{registry.lookup(kind, name)().num_meta_parameters()} meta-parameters]"
      lines.append(f"  {name:<16} {registry.describe(kind, name)}{extra}")
  return "\n".join(lines)
