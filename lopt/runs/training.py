"""Running the gin-configured ``meta_train`` in a run directory: what ``experiments/meta_train.py`` and sweeps do.

``meta_train_in_workdir`` parses the config on a private copy of gin's state (``lopt.config.isolated``), records it
as the workdir's ``config.gin`` (the operative config once the run finishes) and calls ``meta_train``.
``launch`` adds what only a process of its own may do before JAX starts: one CPU device per core and
``jax.distributed``.
"""

from __future__ import annotations

import os
from typing import Sequence

import gin
from absl import logging

from lopt import checkpoints, config
from lopt.meta_trainers import sharding
from lopt.meta_trainers.outer_loop import MetaTrainResult
from lopt.workdir import Workdir


def _write(path: str, text: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


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
  """Removes the directories a failed start created, if they hold nothing but the ``config.gin`` it wrote.

  A start that fails on a bad value fails before anything else is written; a run that wrote metrics or
  checkpoints before failing keeps them.
  """
  workdir = os.path.abspath(layout.root)
  if not os.path.isdir(workdir) or set(os.listdir(workdir)) - {os.path.basename(layout.config)}:
    return
  if os.path.exists(layout.config):
    os.remove(layout.config)
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
      if main_process:
        _write(layout.config, config_text)
      result = config.configured("meta_train")(workdir=workdir, wandb_mode=wandb_mode, config_text=config_text)
    except BaseException:
      # A bad value fails here, before meta_train writes anything: leave no half-created run directory.
      if created is not None:
        _remove_failed_start(layout, created)
      raise
    if main_process and not result.interrupted:
      _write(layout.config, gin.operative_config_str())
  return result


def launch(workdir: str, *, gin_configs: Sequence[str] = (), gin_bindings: Sequence[str] = (),
           wandb_mode: str = "offline", coordinator_address: str | None = None, num_processes: int | None = None,
           process_id: int | None = None, distributed: bool = False) -> MetaTrainResult:
  """``meta_train_in_workdir`` as a process of its own: call before anything has started JAX's backends.

  On CPU the task batch is split over one host device per core unless ``XLA_FLAGS`` sets a device count; with any
  of the distributed arguments (or ``distributed=True`` for JAX's cluster auto-detection) ``jax.distributed`` is
  started first (see docs/distributed.md).
  """
  cores = sharding.use_all_cpu_cores()
  if cores:
    logging.info("Using %d host CPU devices (one per core); set XLA_FLAGS to choose another count.", cores)
  sharding.initialize_distributed(coordinator_address, num_processes, process_id, auto_detect=distributed)
  result = meta_train_in_workdir(workdir, gin_configs=gin_configs, gin_bindings=gin_bindings, wandb_mode=wandb_mode)
  if result.interrupted:
    logging.info("Interrupted at step %d; run the same command to resume.", result.step)
  else:
    logging.info("Done at step %d; final metrics %s", result.step, result.metrics)
  return result
