"""JAX's persistent compilation cache, on by default for lopt's entry points.

lopt compiles one XLA program per task structure and estimator, often a minute or more each on a CPU; with the
cache a second start of the same config (a resumed run, an evaluation of it, a rerun benchmark) loads those
programs from disk instead of compiling them again. Every entry point (``experiments/*.py``, ``benchmarks/*.py``)
calls ``enable`` with its ``--compilation_cache`` flag before it compiles anything.

Where the cache lives, first match wins:

1. ``--compilation_cache=DIR`` (``off`` disables the cache);
2. the environment variable ``LOPT_COMPILATION_CACHE`` (a directory, or ``off``);
3. JAX's own setting, when the user made one (``JAX_COMPILATION_CACHE_DIR`` or ``jax_compilation_cache_dir``);
4. ``$XDG_CACHE_HOME/lopt/jax``, by default ``~/.cache/lopt/jax``.

Deleting the directory is always safe (programs are compiled again). JAX treats the cache as trusted code: do not
point it at a directory others can write to.
"""

from __future__ import annotations

import argparse
import logging as py_logging
import os

import jax
from absl import logging
from jax.experimental.compilation_cache import compilation_cache as jax_cache

ENV_VAR = "LOPT_COMPILATION_CACHE"
OFF = "off"
FLAG_HELP = (f"Directory of JAX's persistent compilation cache, or '{OFF}'; default ${ENV_VAR}, else JAX's own "
             "JAX_COMPILATION_CACHE_DIR, else ~/.cache/lopt/jax (docs/getting_started.md).")

# JAX's defaults only keep programs that compiled for at least a second; lopt's evaluation and data programs
# compile in less but there are many of them, so keep everything (a cache read costs about a millisecond).
_MIN_COMPILE_TIME_SECS = 0.0
_MIN_ENTRY_SIZE_BYTES = -1  # -1: no size threshold, and JAX may not raise it for the filesystem either


def default_directory() -> str:
  """``$XDG_CACHE_HOME/lopt/jax`` (``~/.cache/lopt/jax`` when XDG_CACHE_HOME is unset)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "lopt", "jax")


def resolve(setting: str | None = None) -> str | None:
  """The cache directory ``setting`` (a flag's value) selects, None when the cache is off.

  Args:
    setting: a directory, ``"off"``, or None to fall back on ``LOPT_COMPILATION_CACHE``, then JAX's own setting,
      then ``default_directory()``.

  Raises:
    ValueError: the setting (or the environment variable) is an empty string.
  """
  source = "--compilation_cache"
  if setting is None:
    setting, source = os.environ.get(ENV_VAR), ENV_VAR
  if setting is None:
    return jax.config.jax_compilation_cache_dir or default_directory()
  setting = setting.strip()
  if not setting:
    raise ValueError(f"{source} is empty: give a directory or '{OFF}'.")
  if setting.lower() == OFF:
    return None
  return os.path.abspath(os.path.expanduser(setting))


def enable(setting: str | None = None) -> str | None:
  """Points JAX's persistent compilation cache at ``resolve(setting)`` (or turns it off); call before compiling.

  Also lowers JAX's thresholds so every program is cached, unless the user set them
  (``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` / ``..._MIN_ENTRY_SIZE_BYTES``).

  Returns:
    The cache directory, or None when the cache is off (also when the default directory cannot be created).

  Raises:
    ValueError: the setting is empty, or names a directory that cannot be created.
  """
  directory = resolve(setting)
  # JAX opens its cache once, at the first compilation; forgetting it makes a new setting apply to what follows.
  # (Quietly: JAX logs every reset at INFO, which absl shows.)
  jax_logger = py_logging.getLogger("jax._src.compilation_cache")
  level = jax_logger.level
  jax_logger.setLevel(py_logging.WARNING)
  try:
    jax_cache.reset_cache()
  finally:
    jax_logger.setLevel(level)
  if directory is not None:
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as e:
      if setting is not None or os.environ.get(ENV_VAR) is not None:
        raise ValueError(f"cannot create the compilation cache directory {directory}: {e.strerror}; give another "
                         f"with --compilation_cache=DIR or {ENV_VAR}=DIR, or '{OFF}'.") from e
      logging.warning("JAX's persistent compilation cache is off: cannot create %s (%s).", directory, e.strerror)
      directory = None
  if directory is None:
    jax.config.update("jax_enable_compilation_cache", False)
    logging.info("JAX's persistent compilation cache is off.")
    return None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", directory)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_TIME_SECS)
  if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", _MIN_ENTRY_SIZE_BYTES)
  logging.info("JAX's persistent compilation cache: %s (--compilation_cache=off or %s=off disables it).",
               directory, ENV_VAR)
  return directory


def add_argument(parser: argparse.ArgumentParser) -> None:
  """Adds ``--compilation_cache`` to an argparse parser (the benchmarks'); pass its value to ``enable``."""
  parser.add_argument("--compilation_cache", default=None, metavar="DIR", help=FLAG_HELP)
