"""Metric writers: the one interface through which the training loop reports metrics.

Modelled on ``clu.metric_writers`` (whose package import needs TensorFlow, which lopt does not depend on). The loop
only sees ``MetricWriter``; concrete writers (console, JSONL, wandb, and TensorBoard through clu when the
``[tensorboard]`` extra is installed) compose through ``MultiWriter``. ``create_default_writers`` builds the usual
set for a run directory.
"""

from __future__ import annotations

import abc
import importlib.util
import json
import math
import os
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from lopt import workdir as workdir_layout

WANDB_MODES: tuple[str, ...] = ("offline", "online", "disabled")


class MetricWriter(abc.ABC):
  """Abstract destination for scalar metrics and run hyperparameters."""

  @abc.abstractmethod
  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes scalar metrics (python, numpy or 0-d jax values) for one step."""

  @abc.abstractmethod
  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Records run hyperparameters, e.g. ``{"gin_config": operative_config_text}``."""

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """Writes images, each an (H, W, C) uint8 array with C = 1, 3 or 4 (e.g. ``lopt.plots.read_image``).

    Writers that cannot show images ignore them (the default).
    """
    del step, images

  def flush(self) -> None:
    """Makes everything written so far durable; a no-op by default."""

  def close(self) -> None:
    """Flushes and releases resources; a no-op by default."""


def _to_python(name: str, value: Any) -> bool | int | float:
  """Converts a scalar metric value to a python bool, int or float."""
  array = np.asarray(value)
  if array.ndim != 0:
    raise ValueError(f"Metric '{name}' must be a scalar, got shape {array.shape}.")
  if array.dtype.kind == "b":
    return bool(array)
  if array.dtype.kind in "iu":
    return int(array)
  if array.dtype.kind == "f":
    return float(array)
  raise ValueError(f"Metric '{name}' must be a real number, got dtype {array.dtype}.")


def _check_images(images: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Images as uint8 (H, W, C) arrays; anything else is a ValueError naming the image."""
  checked = {}
  for name, image in images.items():
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or array.dtype != np.uint8:
      raise ValueError(f"Image '{name}' must be an (H, W, C) uint8 array with C in (1, 3, 4), got shape "
                       f"{array.shape} and dtype {array.dtype}.")
    checked[name] = array
  return checked


def _format_value(value: bool | int | float) -> str:
  if isinstance(value, float):
    return f"{value:.5g}"
  return str(value)


class ConsoleWriter(MetricWriter):
  """Logs one line per step through ``absl.logging.info``."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    items = " ".join(f"{k}={_format_value(_to_python(k, v))}" for k, v in scalars.items())
    logging.info("step %d | %s", step, items)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    # A long value (the 50-line gin config) would bury the metrics: its full text is in the run's config.gin and
    # log file; the console gets one line.
    for key, value in hparams.items():
      text = str(value)
      if "\n" in text.strip():
        logging.info("hparam %s: %d lines (in the run's config.gin and meta_train.log)", key,
                     len(text.strip().splitlines()))
      else:
        logging.info("hparam %s: %s", key, text)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    for key, image in _check_images(images).items():
      logging.info("step %d | image %s %s", step, key, "x".join(map(str, image.shape)))


class JsonlWriter(MetricWriter):
  """Appends one JSON object ``{"step": N, **scalars}`` per ``write_scalars`` call.

  The file is opened in append mode, so a resumed run continues the same file (a run resumed from an earlier
  checkpoint repeats some steps; readers that want one row per step should keep the last). Each line is flushed
  as it is written, so a killed run keeps its lines. Non-finite floats become ``null`` to keep every line valid
  JSON. Hyperparameters are not written here: the operative config is saved next to the checkpoints.
  """

  def __init__(self, path: str):
    self._path = path
    parent = os.path.dirname(path)
    if parent:
      os.makedirs(parent, exist_ok=True)
    torn = False
    if os.path.exists(path) and os.path.getsize(path) > 0:
      with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        torn = f.read(1) != b"\n"
    self._file = open(path, "a", encoding="utf-8")
    if torn:  # A run killed mid-line; start ours on a fresh line so it stays parseable.
      self._file.write("\n")

  @property
  def path(self) -> str:
    return self._path

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    row: dict[str, Any] = {"step": int(step)}
    for key, value in scalars.items():
      value = _to_python(key, value)
      row[key] = None if isinstance(value, float) and not math.isfinite(value) else value
    self._file.write(json.dumps(row, allow_nan=False) + "\n")
    self._file.flush()

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """Reads a JSONL metrics file written by ``JsonlWriter``.

  Lines that are not valid JSON (a write torn by a killed process) are skipped with a warning.

  Returns:
    One dict per line, in file order (``null`` values read back as ``None``).
  """
  rows = []
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        logging.warning("Skipping invalid JSON at %s:%d.", path, line_number)
  return rows


def truncate_jsonl(path: str, max_step: int) -> int:
  """Drops the records of ``path`` whose step is above ``max_step`` (atomically); returns how many were dropped.

  A run killed after its last checkpoint logged steps that its resume will compute again; dropping them keeps one
  record per step.
  """
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line torn by the kill
    if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= max_step:
      kept.append(line if line.endswith("\n") else line + "\n")
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(tmp, path)
  return len(lines) - len(kept)


class WandbWriter(MetricWriter):
  """Writes to a Weights & Biases run (``wandb`` is imported only when this writer is built).

  The run id is stored in ``directory``'s ``wandb_run_id`` file (``lopt.workdir``); a later writer on the same
  directory reuses it, so a resumed run logs to the same wandb run. In ``offline`` mode nothing touches the network:
  the run is written under ``directory/wandb`` and can be uploaded later with ``wandb sync``.
  """

  def __init__(self, *, mode: str = "offline", project: str = "lopt", directory: str, name: str | None = None,
               config: dict[str, Any] | None = None, resume_id: str | None = None):
    """Starts (or resumes) the run.

    Args:
      mode: one of ``WANDB_MODES``.
      project: wandb project name.
      directory: where wandb writes its files and where the run id is stored.
      name: display name of the run.
      config: initial run config.
      resume_id: run id to resume; defaults to the id stored in ``directory``, if any.
    """
    if mode not in WANDB_MODES:
      raise ValueError(f"Unknown wandb mode '{mode}'. Choices: {', '.join(WANDB_MODES)}.")
    import wandb  # Lazy: wandb is slow to import and only needed when this writer is used.

    os.makedirs(directory, exist_ok=True)
    id_file = workdir_layout.Workdir(directory).wandb_run_id
    if resume_id is None and mode != "disabled" and os.path.exists(id_file):
      with open(id_file, encoding="utf-8") as f:
        resume_id = f.read().strip() or None
    self._run = wandb.init(mode=mode, project=project, dir=directory, name=name, config=config, id=resume_id,
                           resume="allow" if resume_id else None, settings=_wandb_settings(wandb))
    if mode != "disabled":
      with open(id_file, "w", encoding="utf-8") as f:
        f.write(self._run.id)
    self._closed = False

  @property
  def run(self) -> Any:
    """The underlying ``wandb`` run."""
    return self._run

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._run.log({k: _to_python(k, v) for k, v in scalars.items()}, step=int(step))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._run.config.update(dict(hparams), allow_val_change=True)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    import wandb  # Already imported by __init__; this only binds the name.

    self._run.log({k: wandb.Image(v) for k, v in _check_images(images).items()}, step=int(step))

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      self._run.finish()


def _wandb_settings(wandb: Any) -> Any:
  """Settings that keep wandb quiet and light: no console capture, code upload, job artifacts or stats sampler."""
  wanted = {
      "console": "off",
      "silent": True,
      "save_code": False,
      "disable_job_creation": True,
      "x_disable_stats": True,  # A private setting; skipped below if a wandb version lacks it.
  }
  fields = getattr(wandb.Settings, "model_fields", wanted)
  return wandb.Settings(**{k: v for k, v in wanted.items() if k in fields})


TENSORBOARD_MISSING = ("TensorBoard event files need clu's SummaryWriter, which imports TensorFlow: install the "
                       "extra with `pip install 'lopt[tensorboard]'` (or pass tensorboard=False / --tensorboard=off).")


def tensorboard_available() -> bool:
  """Whether clu's TensorBoard writer can be imported (TensorFlow and TensorBoard are installed)."""
  return all(importlib.util.find_spec(name) is not None for name in ("tensorflow", "tensorboard"))


class TensorBoardWriter(MetricWriter):
  """TensorBoard event files in ``logdir`` through ``clu.metric_writers.SummaryWriter`` (the ``[tensorboard]``
  extra). Hyperparameters that are not scalars (the gin config text) are written as text summaries."""

  def __init__(self, logdir: str):
    try:
      from clu import metric_writers  # pylint: disable=import-outside-toplevel  # imports TensorFlow
    except ImportError as e:
      raise ImportError(f"{TENSORBOARD_MISSING} ({e})") from e
    os.makedirs(logdir, exist_ok=True)
    self._writer = metric_writers.SummaryWriter(logdir)
    self._closed = False

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._writer.write_scalars(int(step), {k: _to_python(k, v) for k, v in scalars.items()})

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    texts = {k: v for k, v in hparams.items() if isinstance(v, str)}
    if texts:
      self._writer.write_texts(0, texts)
    rest = {k: v for k, v in hparams.items() if not isinstance(v, str)}
    if rest:
      self._writer.write_hparams(rest)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    self._writer.write_images(int(step), _check_images(images))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      self._writer.close()


class MultiWriter(MetricWriter):
  """Forwards every call to each of several writers."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self._writers = tuple(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for writer in self._writers:
      writer.write_scalars(step, scalars)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    for writer in self._writers:
      writer.write_hparams(hparams)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    for writer in self._writers:
      writer.write_images(step, images)

  def flush(self) -> None:
    for writer in self._writers:
      writer.flush()

  def close(self) -> None:
    # Close every writer even if one fails, then report the first failure.
    errors = []
    for writer in self._writers:
      try:
        writer.close()
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)
    if errors:
      raise errors[0]


class NullWriter(MetricWriter):
  """Drops everything; used on non-main processes."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    del step, scalars

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams



def create_default_writers(workdir: str, *, wandb_mode: str, config_text: str | None = None,
                           is_main_process: bool = True, wandb_project: str = "lopt",
                           tensorboard: bool | None = None) -> MetricWriter:
  """Builds the writers of a run: console, the workdir's metrics JSONL, wandb (unless disabled) and TensorBoard.

  Args:
    workdir: the run directory.
    wandb_mode: one of ``WANDB_MODES``.
    config_text: the operative gin config, recorded as the ``gin_config`` hyperparameter.
    is_main_process: only the main process writes; other processes get a ``NullWriter``.
    wandb_project: wandb project name.
    tensorboard: event files in ``workdir/tensorboard`` through clu. None (default) writes them when the
      ``[tensorboard]`` extra is installed; True requires it (ImportError naming the extra when missing).

  Returns:
    A writer fanning out to the above.
  """
  if wandb_mode not in WANDB_MODES:
    raise ValueError(f"Unknown wandb mode '{wandb_mode}'. Choices: {', '.join(WANDB_MODES)}.")
  if not is_main_process:
    return NullWriter()
  layout = workdir_layout.Workdir(workdir)
  if tensorboard and not tensorboard_available():
    raise ImportError(TENSORBOARD_MISSING)  # before any writer (a wandb run) is started
  writers: list[MetricWriter] = [ConsoleWriter(), JsonlWriter(layout.metrics)]
  if wandb_mode != "disabled":
    writers.append(WandbWriter(mode=wandb_mode, project=wandb_project, directory=workdir))
  if tensorboard is None:
    tensorboard = tensorboard_available()
    if tensorboard:
      logging.info("Writing TensorBoard event files to %s (the [tensorboard] extra is installed).",
                   layout.tensorboard)
  if tensorboard:
    writers.append(TensorBoardWriter(layout.tensorboard))
  writer = MultiWriter(writers)
  if config_text is not None:
    writer.write_hparams({"gin_config": config_text})
  return writer
