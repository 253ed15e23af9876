"""Tuned-baseline results cached on disk, so evaluating a candidate trains only the candidate.

A baseline's results on one suite task (every value of its grid, every seed: the arrays ``training.train_stacked``
returns for its lanes) are one ``.npz`` file, keyed by everything that determines them: the suite entry and its
position (which selects the task key), the family's name (unique per structure), seed, seeds, steps, the evaluation
points, the baseline's name, grid and schedule flag, the compile options, and the lopt and jax versions. A changed
key is a different file, so it recomputes; a file that cannot be read is named in a warning line and recomputed.
One file per task and baseline means an interrupted evaluation keeps what it finished.

The default directory is ``~/.cache/lopt/baselines``; ``LOPT_BASELINE_CACHE`` (or ``experiments/evaluate.py
--baseline_cache``) overrides it, and ``""`` or ``"off"`` disables the cache (``resolve``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import zipfile
from typing import Any, Callable, Mapping

import jax
import numpy as np

from lopt import checkpoints
from lopt.evaluation.tuned_baselines import Baseline

ENV_VAR = "LOPT_BASELINE_CACHE"
DEFAULT_DIR = os.path.join("~", ".cache", "lopt", "baselines")
OFF_VALUES = ("", "off")
# Bump when the stored arrays or the key change meaning, so old files are never read as new ones.
FORMAT_VERSION = 1
_KEY_ARRAY = "__key__"


def resolve(value: str | None = None) -> str | None:
  """The cache directory: ``value`` if given, else ``$LOPT_BASELINE_CACHE``, else ``~/.cache/lopt/baselines``;
  None (no cache) for ``""`` or ``"off"``."""
  if value is None:
    value = os.environ.get(ENV_VAR, DEFAULT_DIR)
  if value.strip().lower() in OFF_VALUES:
    return None
  return os.path.abspath(os.path.expanduser(value))


def entry_key(*, task_name: str, family_name: str, task_index: int, seed: int, num_seeds: int, num_steps: int,
              baseline_steps: int, eval_every: int, baseline: Baseline,
              compiler_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Everything that determines one baseline's results on one suite task, as a JSON-ready dict."""
  # lopt's front door imports this module, so the version is read from the loaded package rather than imported
  # (an import here would be a cycle through a higher layer).
  return {"format": FORMAT_VERSION, "lopt": sys.modules["lopt"].__version__, "jax": jax.__version__,
          "task": task_name, "family": family_name, "task_index": task_index, "seed": seed, "num_seeds": num_seeds,
          # A scheduled baseline decays over num_steps, so num_steps matters beyond baseline_steps.
          "num_steps": num_steps, "baseline_steps": baseline_steps, "eval_every": eval_every,
          "baseline": baseline.name, "learning_rates": [float(x) for x in baseline.learning_rates],
          "scheduled": baseline.scheduled, "compiler_options": dict(sorted((compiler_options or {}).items()))}


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "_"


class BaselineCache:
  """A directory of cached baseline results; counts its hits and misses (``hits``, ``misses``)."""

  def __init__(self, directory: str, *, printer: Callable[[str], None] = print):
    self.directory = directory
    self.printer = printer
    self.hits = 0
    self.misses = 0

  def path(self, key: Mapping[str, Any]) -> str:
    """``<directory>/<task>/<baseline>-<hash of the key>.npz``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(self.directory, _safe(key["task"]), f"{_safe(key['baseline'])}-{digest}.npz")

  def load(self, key: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """The stored results of ``key``, or None when absent (or unreadable: then a line names the file)."""
    path = self.path(key)
    if not os.path.exists(path):
      self.misses += 1
      return None
    try:
      with np.load(path, allow_pickle=False) as data:
        arrays = {k: np.asarray(data[k]) for k in data.files}
      stored_key = json.loads(str(arrays.pop(_KEY_ARRAY)))
      if "train_loss" not in arrays:
        raise ValueError("no train_loss array")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
      self.printer(f"WARNING: baseline cache file {path} is corrupt ({type(e).__name__}: {e}); recomputing it.")
      self.misses += 1
      return None
    if stored_key != json.loads(json.dumps(key, sort_keys=True)):  # a hash collision, never seen but cheap to rule out
      self.misses += 1
      return None
    self.hits += 1
    return arrays

  def store(self, key: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    """Writes ``arrays`` for ``key`` atomically (readers see the old file or the whole new one); returns the path."""
    path = self.path(key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **{_KEY_ARRAY: np.asarray(json.dumps(key, sort_keys=True))}, **arrays)
    checkpoints.atomic_write(path, buffer.getvalue())
    return path
