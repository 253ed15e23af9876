"""The layout of a run directory: the one place that names its files.

``meta_train`` writes checkpoints and metrics into it, ``lopt.runs`` writes the operative config and reads trained
optimizers from it, evaluation writes its reports there, sweeps mark finished configurations there. Everything
else asks a ``Workdir`` for a path instead of spelling a file name.

    <root>/config.gin            operative gin config of the run (written once the config is checked)
    <root>/lock                  held by the process writing the run (pid, host; ``lopt.locks``)
    <root>/metrics.jsonl         one JSON object per logged step
    <root>/meta_train.log        the log of every ``meta_train_in_workdir`` call, with its full gin config
    <root>/checkpoints/          checkpoint_<step>.msgpack + checksum sidecar checkpoint_<step>.json
    <root>/best/                 the best theta so far by meta-evaluation (``meta_trainers.stability``), one
                                 checkpoint in the same format
    <root>/final_evaluation.json the held-out comparison at the end of meta-training
    <root>/evaluation/           reports of ``experiments/evaluate.py``: evaluation.json, evaluation.md, curves_*.png
    <root>/wandb/, wandb_run_id  wandb's files and the id that a resumed run logs to again
    <root>/tensorboard/          TensorBoard event files (with the ``[tensorboard]`` extra)
    <root>/sweep_result.json     a finished configuration of a sweep
"""

from __future__ import annotations

import dataclasses
import os

CONFIG = "config.gin"
LOCK = "lock"
METRICS = "metrics.jsonl"
LOG = "meta_train.log"
CHECKPOINTS = "checkpoints"
BEST_CHECKPOINTS = "best"
FINAL_EVALUATION = "final_evaluation.json"
EVALUATION = "evaluation"
WANDB_RUN_ID = "wandb_run_id"
TENSORBOARD = "tensorboard"
SWEEP_RESULT = "sweep_result.json"
# Files of an evaluation report (``lopt.evaluation.report``), in whatever directory it is written to.
REPORT_JSON = "evaluation.json"
REPORT_MARKDOWN = "evaluation.md"
# The report of a horizon other than 1x (``experiments/evaluate.py --horizons``), below the 1x report's directory.
HORIZON_DIR = "horizon_{}x"
REPORT_FIGURES = {"train_curves": "curves_train.png", "test_curves": "curves_test.png", "speedups": "speedups.png"}


def _entry(name: str) -> property:
  """A read-only attribute of ``Workdir``: the path of ``name`` inside the run directory."""
  return property(lambda self: os.path.join(self.root, name), doc=f"``<root>/{name}``")


@dataclasses.dataclass(frozen=True)
class Workdir:
  """Paths inside the run directory ``root`` (nothing is created or read here)."""

  root: str

  config = _entry(CONFIG)
  lock = _entry(LOCK)
  metrics = _entry(METRICS)
  log = _entry(LOG)
  checkpoints = _entry(CHECKPOINTS)
  best_checkpoints = _entry(BEST_CHECKPOINTS)
  final_evaluation = _entry(FINAL_EVALUATION)
  evaluation = _entry(EVALUATION)
  wandb_run_id = _entry(WANDB_RUN_ID)
  tensorboard = _entry(TENSORBOARD)
  sweep_result = _entry(SWEEP_RESULT)
