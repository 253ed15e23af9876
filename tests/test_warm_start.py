"""Warm starts: a run continued in a new workdir from theta and outer-optimizer state alone."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lopt import checkpoints, writers
from lopt.architectures import ff
from lopt.meta_trainers import outer_loop, warm_start
from lopt.meta_trainers import pes as pes_lib
from lopt.meta_trainers import stability
from lopt.tasks import fixed, quadratic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(workdir, num_outer_steps, **kw):
  return outer_loop.meta_train(
      task_sampler=fixed(quadratic(dim=4)), architecture=ff.ff(hidden_sizes=(8,)),
      estimator=pes_lib.pes(num_tasks=2, truncation_length=5, horizon=20), num_outer_steps=num_outer_steps,
      workdir=str(workdir), wandb_mode="disabled", log_every=2, checkpoint_every=2, **kw)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def first_leg(tmp_path_factory):
  """A 4-step run and its warm start."""
  root = tmp_path_factory.mktemp("warm")
  first = _run(root / "first", 4)
  path = warm_start.export(str(root / "first" / "checkpoints"), str(root / "warm"))
  return root, first, path


def test_export_holds_theta_outer_state_and_step_only(first_leg):
  root, first, path = first_leg
  raw, step, _ = checkpoints.restore_raw(str(root / "warm"))
  assert step == 4 and int(raw["step"]) == 4
  assert set(raw) == {"theta", "outer_opt_state", "step"}  # no inner task states
  full, _, _ = checkpoints.restore_raw(str(root / "first" / "checkpoints"))
  for a, b in zip(_leaves(raw["theta"]), _leaves(full["theta"])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(_leaves(raw["outer_opt_state"]), _leaves(full["outer_opt_state"])):
    np.testing.assert_array_equal(a, b)
  assert os.path.getsize(path) < os.path.getsize(checkpoints.checkpoint_path(str(root / "first" / "checkpoints"), 4))


def test_warm_started_run_counts_on_from_the_exported_theta(first_leg, tmp_path):
  root, first, _ = first_leg
  # Zero further steps: the run's theta is the exported one, and it starts at step 4, not 0.
  same = _run(tmp_path / "zero", 4, warm_start=str(root / "warm"))
  assert same.step == 4
  for a, b in zip(_leaves(same.theta), _leaves(first.theta)):
    np.testing.assert_array_equal(a, b)
  cont = _run(tmp_path / "cont", 6, warm_start=str(root / "warm"))
  assert cont.step == 6
  steps = [r["step"] for r in writers.read_jsonl(os.path.join(tmp_path / "cont", "metrics.jsonl"))]
  assert steps == [6]
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(cont.theta), _leaves(first.theta)))


def test_outer_optimizer_state_is_carried(first_leg, tmp_path):
  root, _, _ = first_leg
  exported, _, _ = checkpoints.restore_raw(str(root / "warm"))
  _run(tmp_path / "cont", 4, warm_start=str(root / "warm"))
  restored, _, _ = checkpoints.restore_raw(str(tmp_path / "cont" / "checkpoints"))
  for a, b in zip(_leaves(restored["outer_opt_state"]), _leaves(exported["outer_opt_state"])):
    np.testing.assert_array_equal(a, b)
  # Adam's step count continued from the first leg (it would be 0 for a fresh outer optimizer).
  counts = [int(x) for x in _leaves(restored["outer_opt_state"]) if x.dtype == np.int32 and x.ndim == 0]
  assert counts and max(counts) == 4


def test_workdir_checkpoints_win_over_the_warm_start(first_leg, tmp_path):
  root, _, _ = first_leg
  own = _run(tmp_path / "own", 2)
  again = _run(tmp_path / "own", 2, warm_start=str(root / "warm"))  # already finished at step 2: resumes its own
  assert again.step == 2
  for a, b in zip(_leaves(own.theta), _leaves(again.theta)):
    np.testing.assert_array_equal(a, b)


def test_guard_state_travels_with_the_warm_start(tmp_path):
  def meta_eval(*, theta, step, architecture, task_sampler):
    return {"mean/final_train_loss_vs_adam": 1.0 / step}  # improves every time: best = the last evaluated step

  kw = dict(meta_eval=meta_eval, meta_eval_every=2, stability=stability.stability_guard())
  _run(tmp_path / "a", 4, **kw)
  warm_start.export(str(tmp_path / "a" / "checkpoints"), str(tmp_path / "warm"))
  raw, _, _ = checkpoints.restore_raw(str(tmp_path / "warm"))
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(raw["outer_opt_state"])[0]}
  best_step = [v for k, v in flat.items() if "best_step" in k]
  assert best_step and int(best_step[0]) == 4


def test_missing_or_mismatched_warm_start_is_named(first_leg, tmp_path):
  root, _, _ = first_leg
  missing = str(tmp_path / "nowhere")
  with pytest.raises(checkpoints.CheckpointError, match="nowhere"):
    _run(tmp_path / "a", 6, warm_start=missing)
  with pytest.raises(checkpoints.CheckpointError, match="warm"):  # another architecture: theta does not fit
    outer_loop.meta_train(
        task_sampler=fixed(quadratic(dim=4)), architecture=ff.ff(hidden_sizes=(4,)),
        estimator=pes_lib.pes(num_tasks=2, truncation_length=5, horizon=20), num_outer_steps=6,
        workdir=str(tmp_path / "b"), wandb_mode="disabled", warm_start=str(root / "warm"))
  with pytest.raises(ValueError, match="meta_train.warm_start"):
    _run(tmp_path / "c", 6, warm_start="")
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint|No checkpoint"):
    warm_start.export(str(tmp_path / "empty"), str(tmp_path / "out"))


def test_export_cli_writes_and_reports(first_leg, tmp_path):
  root, _, _ = first_leg
  out = tmp_path / "cli"
  result = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "export_warm_start.py"),
                           f"--workdir={root / 'first'}", f"--out={out}", "--step=2"],
                          capture_output=True, text=True, check=False, cwd=REPO)
  assert result.returncode == 0, result.stderr
  assert checkpoints.latest_step(str(out)) == 2
  bad = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "export_warm_start.py"),
                        f"--workdir={tmp_path / 'none'}", f"--out={out}"], capture_output=True, text=True,
                       check=False, cwd=REPO)
  assert bad.returncode != 0 and "none" in (bad.stderr + bad.stdout)
