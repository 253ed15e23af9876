"""Sweeps: grid expansion, two tiny configurations meta-trained for real, skipping finished ones, the summary."""

import json
import os

import pytest

from lopt import writers
from lopt import workdir as layout
from lopt.runs import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ES = os.path.join(ROOT, "gin_configs", "ablations", "estimator_es.gin")

# A run config small enough to meta-train in a few seconds.
TINY = [
    "HORIZON = 10",
    "meta_train.task_sampler = @task_samplers.fixed()",
    "task_samplers.fixed.task_family = @task_families.quadratic()",
    "task_families.quadratic.dim = 4",
    "meta_train.architecture = @architectures.ff_small()",
    "meta_train.estimator = @estimators.pes()",
    "estimators.pes.num_tasks = 2",
    "estimators.pes.truncation_length = 5",
    "estimators.pes.horizon = %HORIZON",
    "meta_train.num_outer_steps = 2",
    "meta_train.log_every = 1",
]


def test_expand_grid_names_and_errors():
  configs = sweep.expand(["base", ES], ["meta_train.seed=0|1", "estimators.pes.std=(0.1)|0.2"])
  assert len(configs) == 8
  assert configs[0] == sweep.SweepConfig("meta_train.seed=0,estimators.pes.std=_0.1", (),
                                         ("meta_train.seed = 0", "estimators.pes.std = (0.1)"))
  assert configs[-1].config_files == (ES,) and configs[-1].name.startswith("estimator_es,meta_train.seed=1")
  assert [c.name for c in sweep.expand(["base", ES])] == ["base", "estimator_es"]
  assert [c.name for c in sweep.expand(["base"], ["a.b=1|2"])] == ["a.b=1", "a.b=2"]
  assert sweep.parse_axis("a.b = (1, 2) | (3, 4)") == ("a.b", ["(1, 2)", "(3, 4)"])
  for bad in ("a.b", "=1|2", "a.b=1||2"):
    with pytest.raises(ValueError, match="param=value1"):
      sweep.parse_axis(bad)
  with pytest.raises(ValueError, match="twice"):
    sweep.expand(["base"], ["a=1", "a=2"])
  with pytest.raises(ValueError, match="no_such.gin"):
    sweep.expand(["no_such.gin"])


def test_sweep_of_two_tiny_configurations(tmp_path, clean_gin):
  root = str(tmp_path / "sweep")
  configs = sweep.expand(["base"], ["meta_train.seed=0|1"])
  lines = []
  records = sweep.run_sweep(configs, root, base_bindings=TINY, wandb_mode="disabled", printer=lines.append)
  assert [r["name"] for r in records] == ["meta_train.seed=0", "meta_train.seed=1"]
  assert any("[2/2]" in line and "ETA" in line for line in lines)
  for record in records:
    workdir = os.path.join(root, record["name"])
    assert record["step"] == 2 and not record["interrupted"]
    assert os.path.exists(os.path.join(workdir, "checkpoints"))
    assert "meta_train.seed = " + record["name"][-1] in open(os.path.join(workdir, "config.gin")).read()
    jsonl = writers.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert jsonl[-1]["meta_loss"] == pytest.approx(record["metrics"]["meta_loss"])
  # Different seeds train different tasks: the runs differ.
  assert records[0]["metrics"]["meta_loss"] != records[1]["metrics"]["meta_loss"]
  with open(os.path.join(root, sweep.SUMMARY_JSON)) as f:
    assert [r["name"] for r in json.load(f)] == ["meta_train.seed=0", "meta_train.seed=1"]
  summary = open(os.path.join(root, sweep.SUMMARY_MARKDOWN)).read()
  assert "| meta_train.seed=1 | 2 |" in summary and "meta_loss" in summary

  # Running again skips both finished configurations and runs only a new one.
  ran = []

  def fake_run(config, workdir, **kwargs):
    ran.append(config.name)
    return {"name": config.name, "config_files": [], "bindings": list(config.bindings), "step": 2, "seconds": 1.0,
            "interrupted": False, "metrics": {"meta_loss": 0.5}}

  more = sweep.expand(["base"], ["meta_train.seed=0|1|2"])
  records = sweep.run_sweep(more, root, base_bindings=TINY, printer=lines.append, run=fake_run)
  assert ran == ["meta_train.seed=2"]
  assert [r["name"] for r in records] == ["meta_train.seed=0", "meta_train.seed=1", "meta_train.seed=2"]
  assert "already finished" in lines[-3]


def test_interrupted_configuration_stops_the_sweep(tmp_path):
  def interrupted(config, workdir, **kwargs):
    return {"name": config.name, "config_files": [], "bindings": [], "step": 1, "seconds": 1.0, "interrupted": True,
            "metrics": {}}

  lines = []
  records = sweep.run_sweep(sweep.expand(["base"], ["a=1|2"]), str(tmp_path), printer=lines.append, run=interrupted)
  assert [r["name"] for r in records] == ["a=1"]
  assert not os.path.exists(os.path.join(tmp_path, "a=1", layout.SWEEP_RESULT))  # resumed, not skipped, next time
  assert "resume" in lines[-1]


def test_final_metrics_collects_meta_eval_and_heldout(tmp_path):
  writer = writers.JsonlWriter(str(tmp_path / layout.METRICS))
  writer.write_scalars(5, {"meta_loss": 0.9, "meta_eval/mean/test_loss": 0.7, "meta_eval/f/test_loss": 0.7})
  writer.write_scalars(10, {"meta_loss": 0.8, "meta_eval/mean/test_loss": 0.6})
  writer.close()

  class Result:
    metrics = {"meta_loss": 0.8, "grad_norm": 3.0}
    evaluation = {"f": {"meta-trained": {"test_loss": 0.2}, "adam": {"test_loss": 0.4}},
                  "g": {"meta-trained": {"test_loss": 0.4}, "adam": {"test_loss": 0.4}}}

  metrics = sweep._final_metrics(str(tmp_path), Result())  # pylint: disable=protected-access
  assert metrics == {"meta_loss": 0.8, "meta_eval/mean/test_loss": 0.6,
                     "heldout/meta-trained/test_loss": pytest.approx(0.3), "heldout/adam/test_loss": 0.4}
