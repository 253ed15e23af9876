"""Running the gin-configured ``meta_train`` in a run directory: what ``experiments/meta_train.py`` and sweeps do.

``meta_train_in_workdir`` parses the config on a private copy of gin's state (``lopt.config.isolated``), holds the
workdir's lock, refuses a config that changes what the workdir's checkpoints mean (``config_check``), records the
config as the workdir's ``config.gin`` once ``meta_train`` has restored (or initialised) its state, and after the run
replaces it by the operative config. The log, headed by the full config, is appended to ``meta_train.log`` (the
console shows one line for the config). ``launch`` adds what only a process of its own may do before JAX starts: one CPU
device per core, JAX's persistent compilation cache (``lopt.compilation_cache``) and ``jax.distributed``.
"""

from __future__ import annotations

import contextlib
import logging as py_logging
import os
import time
from typing import Iterator, Sequence

import gin
from absl import logging

from lopt import checkpoints, compilation_cache, config, locks
from lopt.meta_trainers import sharding
from lopt.meta_trainers.outer_loop import MetaTrainResult
from lopt.runs import config_check
from lopt.workdir import Workdir


def _write(path: str, text: str) -> None:
  """Replaces ``path`` atomically: a kill mid-write must not leave a truncated record of the run."""
  checkpoints.atomic_write(path, text.encode("utf-8"))


@contextlib.contextmanager
def _log_file(path: str, config_text: str) -> Iterator[None]:
  """Appends the run's log (absl's INFO and above) to ``path`` for the block, after the full gin config."""
  with open(path, "a", encoding="utf-8") as f:
    f.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} meta_train, gin config:\n{config_text}\n")
  handler = py_logging.FileHandler(path, encoding="utf-8")
  handler.setLevel(py_logging.INFO)
  handler.setFormatter(py_logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  logger = logging.get_absl_logger()
  logger.addHandler(handler)
  try:
    yield
  finally:
    logger.removeHandler(handler)
    handler.close()


def _first_missing(path: str) -> str | None:
  """The outermost directory of ``path`` (or ``path`` itself) that does not exist yet; None if it exists."""
  path = os.path.abspath(path)
  missing = None
  while not os.path.exists(path):
    missing = path
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return missing


def _remove_failed_start(layout: Workdir, created: str) -> None:
  """Removes the directories a failed start created, if they hold nothing but what the start itself wrote.

  That is ``config.gin``, the start's log and the lock: a start that fails on a bad value fails before any step.
  A run that wrote metrics or checkpoints before failing keeps everything.
  """
  workdir = os.path.abspath(layout.root)
  own = {layout.config, layout.log, layout.lock}
  if not os.path.isdir(workdir) or set(os.listdir(workdir)) - {os.path.basename(p) for p in own}:
    return
  for path in own:
    if os.path.exists(path):
      os.remove(path)
  # Empty directories only, from the workdir up to the outermost one this start created.
  path = workdir
  while True:
    try:
      os.rmdir(path)
    except OSError:
      return
    if path == created:
      return
    path = os.path.dirname(path)


def meta_train_in_workdir(workdir: str, *, gin_configs: Sequence[str] = (), gin_bindings: Sequence[str] = (),
                          wandb_mode: str = "offline", fresh_config: bool = True) -> MetaTrainResult:
  """Meta-trains as the gin files and bindings configure, in ``workdir``; resumes from its checkpoints.

  Args:
    workdir: the run directory (created if missing).
    gin_configs: gin files, parsed in order.
    gin_bindings: gin bindings, applied after the files.
    wandb_mode: ``"offline"``, ``"online"`` or ``"disabled"``.
    fresh_config: start from an empty gin configuration; False layers the files over the caller's bindings. The
      caller's configuration is restored afterwards either way.

  Returns:
    The ``MetaTrainResult``.

  Raises:
    lopt.config.ConfigError: for a missing file, unknown name or malformed binding.
    lopt.runs.config_check.ConfigMismatchError: when the workdir holds checkpoints of a configuration that differs
      in a state-defining binding (architecture and its sizes, estimator, tasks, seed).
    lopt.locks.LockedError: when another process is writing the workdir.
    lopt.arguments.ArgumentError: for a bad value of a plugin or ``meta_train`` argument.
  """
  layout = Workdir(workdir)
  created = _first_missing(workdir)
  with config.isolated():
    if fresh_config:
      gin.clear_config()
    config.parse(gin_configs, gin_bindings)
    checkpoints.ensure_writable_dir(workdir)
    try:
      config_text = gin.config_str()
      main_process = sharding.is_main_process()
      with contextlib.ExitStack() as held:
        if main_process:
          held.enter_context(locks.hold(layout.lock))
        if checkpoints.steps_on_disk(layout.checkpoints):
          if os.path.isfile(layout.config):
            config_check.check_resume(layout.config, config_check.snapshot(), workdir)
          else:
            logging.warning("%s has checkpoints but no config.gin: the config cannot be checked against them.", workdir)
        if main_process:
          held.enter_context(_log_file(layout.log, config_text))
        # Written once the state is restored, not before: a refused resume must not overwrite the run's record.
        result = config.configured("meta_train")(workdir=workdir, wandb_mode=wandb_mode, config_text=config_text,
                                                 on_start=lambda: _write(layout.config, config_text))
        if main_process and not result.interrupted:
          _write(layout.config, gin.operative_config_str())
    except BaseException:
      # A bad value fails here, before meta_train writes anything: leave no half-created run directory.
      if created is not None:
        _remove_failed_start(layout, created)
      raise
  return result


def launch(workdir: str, *, gin_configs: Sequence[str] = (), gin_bindings: Sequence[str] = (),
           wandb_mode: str = "offline", coordinator_address: str | None = None, num_processes: int | None = None,
           process_id: int | None = None, distributed: bool = False,
           compilation_cache_dir: str | None = None) -> MetaTrainResult:
  """``meta_train_in_workdir`` as a process of its own: call before anything has started JAX's backends.

  On CPU the task batch is split over one host device per core unless ``XLA_FLAGS`` sets a device count; with any
  of the distributed arguments (or ``distributed=True`` for JAX's cluster auto-detection) ``jax.distributed`` is
  started first (see docs/distributed.md). JAX's persistent compilation cache is on: ``compilation_cache_dir`` is a
  directory, ``"off"``, or None for ``lopt.compilation_cache``'s default (``LOPT_COMPILATION_CACHE``, ...).
  """
  cores = sharding.use_all_cpu_cores()
  if cores:
    logging.info("Using %d host CPU devices (one per core); set XLA_FLAGS to choose another count.", cores)
  compilation_cache.enable(compilation_cache_dir)
  sharding.initialize_distributed(coordinator_address, num_processes, process_id, auto_detect=distributed)
  result = meta_train_in_workdir(workdir, gin_configs=gin_configs, gin_bindings=gin_bindings, wandb_mode=wandb_mode)
  if result.interrupted:
    logging.info("Interrupted at step %d; run the same command to resume.", result.step)
  else:
    logging.info(done_message(result))
  return result


def done_message(result: MetaTrainResult) -> str:
  """The line ``launch`` logs at the end of a run (the metrics of its last logged step, when there are any)."""
  if not result.metrics:
    return f"Done at step {result.step}; no metrics were logged for it."
  shown = ", ".join(f"{k} = {v:.4g}" for k, v in sorted(result.metrics.items()))
  return f"Done at step {result.step}; final metrics: {shown}"
