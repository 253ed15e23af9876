"""Evaluation: training programs (single, grid, stacked), loading a trained optimizer, the suite report end to end,
and periodic meta-evaluation through meta_train."""

import glob
import json
import os
import shutil
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

from lopt import checkpoints, config, writers
from lopt.evaluation import hooks, plots, scoring, suites, training, tuned_baselines
from lopt.evaluation import report as report_lib
from lopt.runs import trained
from lopt.architectures import baselines, ff
from lopt.meta_trainers import outer_loop
from lopt.meta_trainers import pes as pes_lib
from lopt.tasks import classic_2d, fixed, quadratic


def _adam(lr):
  return lambda n: baselines.adam(learning_rate=lr).optimizer({}, num_steps=n)


def test_eval_steps():
  assert training.eval_steps(10, 5) == [0, 5, 10]
  assert training.eval_steps(10, 4) == [0, 4, 8, 10]
  assert training.eval_steps(10, 0) == [10]
  assert training.eval_steps(10, 20) == [10]


def test_train_tasks_curves_and_an_independent_loop():
  family = quadratic(4)
  key = jax.random.key(3)
  result = training.train_tasks(family, _adam(0.1), key, num_tasks=2, num_steps=10, eval_every=4)
  assert result["train_loss"].shape == (2, 10) and result["test_curve"].shape == (2, 4)
  np.testing.assert_array_equal(result["test_curve"][:, -1], result["test_loss"])
  # The first training loss is the initial loss, measured before any update: recompute it by hand.
  task_key = jax.random.split(key, 2)[0]
  cfg_key, init_key, data_key, _ = jax.random.split(task_key, 4)
  task = family.task(family.sample(cfg_key))
  params = task.init(init_key)
  batch_key, loss_key = jax.random.split(jax.random.split(data_key, 10)[0])
  loss = task.normalize(task.loss(params, loss_key, task.batch(batch_key, "train")))
  np.testing.assert_allclose(result["train_loss"][0, 0], loss, rtol=1e-5)
  assert result["train_loss"][0, -1] < 0.5 * result["train_loss"][0, 0]


def test_grid_and_stacked_lanes_equal_separate_runs():
  family = classic_2d("rosenbrock")
  key = jax.random.key(0)
  common = dict(num_tasks=2, num_steps=12, eval_every=6)
  separate = {lr: training.train_tasks(family, _adam(lr), key, **common) for lr in (1e-3,)}
  sgd = lambda lr, n: baselines.sgd_momentum(learning_rate=lr).optimizer({}, num_steps=n)
  sgd_run = training.train_tasks(family, lambda n: sgd(1e-3, n), key, **common)
  grid = training.train_grid(family, lambda lr, n: _adam(lr)(n), np.array([1e-3, 1e-2]), key, **common)
  makers = [lambda lr, n: _adam(lr)(n), sgd]
  stacked = training.train_stacked(family, makers, [(0, 1e-3), (1, 1e-3), (0, 1e-2)], key, **common)
  for name in ("train_loss", "test_curve"):
    np.testing.assert_allclose(grid[name][0], separate[1e-3][name], rtol=1e-5)

    np.testing.assert_allclose(stacked[name][0], separate[1e-3][name], rtol=1e-5)
    np.testing.assert_allclose(stacked[name][1], sgd_run[name], rtol=1e-5)
    np.testing.assert_allclose(stacked[name][2], grid[name][1], rtol=1e-5)
  with pytest.raises(ValueError, match="indices below 2"):
    training.train_stacked(family, makers, [(2, 0.1)], key, **common)


def test_schedule_free_is_evaluated_at_its_average():
  family = quadratic(4)
  key = jax.random.key(0)
  schedule_free = tuned_baselines.default_baselines(names=["schedule_free_adamw"])[0]
  common = dict(num_tasks=2, num_steps=10)
  averaged = training.train_tasks(family, lambda n: schedule_free.make(0.01, n), key,
                                    eval_params=schedule_free.eval_params, **common)
  iterate = training.train_tasks(family, lambda n: schedule_free.make(0.01, n), key, **common)
  np.testing.assert_array_equal(averaged["train_loss"], iterate["train_loss"])
  assert not np.allclose(averaged["test_loss"], iterate["test_loss"])


def _meta_train(workdir, **kw):
  return outer_loop.meta_train(
      task_sampler=fixed(quadratic(4)), architecture=ff.ff_small(hidden_sizes=(4,)),
      estimator=pes_lib.pes(num_tasks=2, truncation_length=5, horizon=10), num_outer_steps=2, workdir=str(workdir),
      wandb_mode="disabled", log_every=1, checkpoint_every=1, **kw)


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """A tiny meta_train run with its config.gin, as experiments/meta_train.py leaves it (shared: read only)."""
  workdir = tmp_path_factory.mktemp("run")
  result = _meta_train(workdir)
  with open(workdir / "config.gin", "w") as f:
    f.write("meta_train.architecture = @architectures.ff_small()\narchitectures.ff_small.hidden_sizes = (4,)\n")
  return workdir, result


def test_load_trained_optimizer(trained_workdir, tmp_path, clean_gin):
  workdir, result = trained_workdir
  loaded = trained.load(str(workdir))
  assert loaded.step == 2 and loaded.architecture.name == "ff_small"
  for a, b in zip(jax.tree.leaves(loaded.theta), jax.tree.leaves(result.theta)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert trained.load(str(workdir), step=1).step == 1
  assert gin.config_str() == ""  # nothing leaks into the caller's gin state
  with pytest.raises(FileNotFoundError, match="config.gin"):
    trained.load(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "config.gin").write_text("")
  with pytest.raises(FileNotFoundError, match="No complete checkpoint"):
    trained.load(str(tmp_path / "empty"))
  # A config naming another architecture: theta does not fit, and the error says so.
  other = tmp_path / "other"
  shutil.copytree(workdir, other)
  (other / "config.gin").write_text("meta_train.architecture = @architectures.ff_small()\n"
                                    "architectures.ff_small.hidden_sizes = (8,)\n")
  with pytest.raises(checkpoints.CheckpointError, match="expects|does not fit"):
    trained.load(str(other))


def test_evaluate_two_tiny_tasks_end_to_end(trained_workdir, tmp_path):
  workdir, _ = trained_workdir
  loaded = trained.load(str(workdir))
  lines = []
  report = scoring.evaluate_suite(
      suites.tiny_suite(), baselines=tuned_baselines.default_baselines(adam_learning_rates=(1e-2, 1e-1),
                                                                           sgd_learning_rates=(1e-2,)),
      learned=lambda n: loaded.architecture.optimizer(loaded.theta, num_steps=n), learned_name="ff_small",
      num_steps=10, num_seeds=2, baseline_steps_factor=2, eval_every=5, printer=lines.append)
  # A line as each of the 4 programs starts and one with the ETA as it ends.
  assert len(lines) == 8 and "[4/4]" in lines[-1] and "ETA" in lines[-1]
  assert lines[0].startswith("[1/4] quadratic: ff_small x 9 multipliers, 2 seeds x 10 steps ...") and "ETA" in lines[1]
  assert set(report["tasks"]) == {"quadratic", "rosenbrock"}
  for task in report["tasks"].values():
    assert set(task["optimizers"]) == {"ff_small", "ff_small tuned", "adam", "adam_cosine", "radam", "adamw",
                                       "sgd_momentum", "prodigy",
                                       "dadapt_adamw", "schedule_free_adamw"}
    adam = task["optimizers"]["adam"]
    assert len(adam["train_curve"]) == 20 and adam["eval_steps"] == [0, 5, 10, 15, 20]
    assert adam["learning_rate"] in (1e-2, 1e-1)
    assert adam["final_train_loss"] == pytest.approx(min(adam["grid"].values()))
    assert len(task["optimizers"]["ff_small"]["train_curve"]) == 10
    assert "value" in task["speedup"] and task["speedup"]["label"].endswith("x")
  assert "geometric_mean" in report["speedup_summary"]

  paths = report_lib.write_report(report, str(tmp_path / "out"))
  with open(paths["json"]) as f:
    assert json.load(f)["tasks"].keys() == report["tasks"].keys()
  markdown = open(paths["markdown"]).read()
  assert "| quadratic |" in markdown and "speed-up vs tuned Adam" in markdown and "Tuned learning rates" in markdown
  for kind in ("train_curves", "test_curves", "speedups"):
    image = plots.read_image(paths[kind])
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8 and image.shape[0] > 100

  recorder = writers.JsonlWriter(str(tmp_path / "out" / "metrics.jsonl"))
  report_lib.track_report(recorder, report, paths, step=2)
  recorder.close()
  (row,) = writers.read_jsonl(str(tmp_path / "out" / "metrics.jsonl"))
  assert row["step"] == 2 and "rosenbrock/adam/final_train_loss" in row and "speedup/geometric_mean" in row


def test_evaluate_rejects_bad_settings():
  with pytest.raises(ValueError, match="divisible"):
    scoring.evaluate_suite(suites.tiny_suite(), baselines=[], num_steps=10, eval_every=3)
  with pytest.raises(KeyError, match="No eval_suite named 'tinny'.*Did you mean 'tiny'"):
    suites.get_suite("tinny")
  with pytest.raises(ValueError, match="Unknown baselines"):
    tuned_baselines.default_baselines(names=["adamm"])


def test_periodic_meta_eval_through_meta_train(tmp_path):
  meta_eval = hooks.periodic_meta_eval(num_tasks=2, num_steps=10, fast_compile=True)
  result = _meta_train(tmp_path, meta_eval=meta_eval, meta_eval_every=1)
  rows = [r for r in writers.read_jsonl(str(tmp_path / "metrics.jsonl")) if "meta_eval/mean/test_loss" in r]
  assert [r["step"] for r in rows] == [1, 2]
  family = quadratic(4).name
  for row in rows:
    for name in ("mean_train_loss", "final_train_loss", "test_loss", "final_train_loss_vs_adam"):
      assert np.isfinite(row[f"meta_eval/{family}/{name}"])
      assert row[f"meta_eval/mean/{name}"] == pytest.approx(row[f"meta_eval/{family}/{name}"])
  # The same held-out tasks at every call: the same theta scores the same.
  again = meta_eval(theta=result.theta, step=2, architecture=ff.ff_small(hidden_sizes=(4,)),
                    task_sampler=fixed(quadratic(4)))
  assert again[f"{family}/test_loss"] == pytest.approx(rows[-1][f"meta_eval/{family}/test_loss"], rel=1e-5)


def test_periodic_meta_eval_is_configurable_by_gin(clean_gin):
  config.parse([], ["meta_train.meta_eval = @periodic_meta_eval()", "periodic_meta_eval.num_tasks = 3",
                    "meta_train.meta_eval_every = 5"])
  assert gin.query_parameter("periodic_meta_eval.num_tasks") == 3
  with pytest.raises(config.ConfigError, match="num_tasks"):
    config.parse([], ["periodic_meta_eval.num_taks = 3"])


SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "evaluate.py")


def test_evaluate_cli_reports_a_bad_workdir(tmp_path):
  proc = subprocess.run([sys.executable, SCRIPT, f"--workdir={tmp_path}", "--wandb_mode=disabled"],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "config.gin" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_evaluate_cli_end_to_end(trained_workdir, tmp_path):
  workdir, _ = trained_workdir
  out = tmp_path / "out"
  env = dict(os.environ, WANDB_DIR=str(tmp_path), WANDB_CACHE_DIR=str(tmp_path / "cache"),
             WANDB_CONFIG_DIR=str(tmp_path / "config"), WANDB_DATA_DIR=str(tmp_path / "data"), HOME=str(tmp_path))
  proc = subprocess.run([sys.executable, SCRIPT, f"--workdir={workdir}", f"--out_dir={out}", "--suite=tiny",
                         "--num_steps=10", "--num_seeds=2", "--baselines=adam,prodigy", "--wandb_mode=offline"],
                        capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "[4/4]" in proc.stdout and "speed-up vs tuned Adam" in proc.stdout
  for name in ("evaluation.json", "evaluation.md", "curves_train.png", "curves_test.png", "speedups.png",
               "metrics.jsonl"):
    assert (out / name).exists(), name
  assert len(glob.glob(str(out / "wandb" / "offline-run-*" / "files" / "media" / "images" / "**" / "*.png"),
                       recursive=True)) == 3


def test_heldout_comparison_prints_progress_per_run(capsys, tmp_path):
  sampler = fixed(quadratic(2))
  report = hooks.heldout_comparison(theta={}, init_theta={}, architecture=baselines.adam(), task_sampler=sampler,
                                    workdir=str(tmp_path), num_tasks=1, num_steps=4)
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
  # 3 optimizers: a line as each run starts and one with the count and ETA as it ends.
  assert len(lines) == 6 and set(report) == {"quadratic_d2_s0.1-10"}
  assert lines[0].startswith("[1/3] held-out quadratic_d2") and "meta-trained, 1 tasks x 4 steps ..." in lines[0]
  assert lines[-1].startswith("[3/3] held-out quadratic_d2") and "ETA 0s" in lines[-1]
