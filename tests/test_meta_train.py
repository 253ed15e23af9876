"""``meta_train`` end to end: a few steps, metrics, checkpoints, exact resume, bad input."""

import os

import jax
import numpy as np
import pytest

from lopt import checkpoints, writers
from lopt.architectures import ff
from lopt.meta_trainers import outer_loop
from lopt.meta_trainers import pes as pes_lib
from lopt.tasks import fixed, quadratic


def _run(workdir, num_outer_steps, **kw):
  return outer_loop.meta_train(
      task_sampler=fixed(quadratic(dim=4)), architecture=ff.ff(hidden_sizes=(8,)),
      estimator=pes_lib.pes(num_tasks=2, truncation_length=5, horizon=20), num_outer_steps=num_outer_steps,
      workdir=str(workdir), wandb_mode="disabled", log_every=2, checkpoint_every=2, **kw)


def test_meta_train_runs_logs_and_checkpoints(tmp_path):
  result = _run(tmp_path, 4)
  assert result.step == 4
  lines = writers.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert [line["step"] for line in lines] == [2, 4]
  for key in ("meta_loss", "grad_norm", "masked_tasks", "steps_per_sec", "eta_sec"):
    assert key in lines[-1]
  assert checkpoints.latest_step(os.path.join(tmp_path, "checkpoints")) == 4
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(result.theta))


def test_resume_continues_and_matches_straight_run(tmp_path):
  straight = _run(tmp_path / "straight", 6)
  _run(tmp_path / "split", 4)
  resumed = _run(tmp_path / "split", 6)
  assert resumed.step == 6
  steps = [line["step"] for line in writers.read_jsonl(os.path.join(tmp_path / "split", "metrics.jsonl"))]
  assert steps == [2, 4, 6]  # the resumed run did not start again from step 0
  for a, b in zip(jax.tree.leaves(straight.theta), jax.tree.leaves(resumed.theta)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_final_evaluation_is_called(tmp_path):
  seen = {}

  def final_evaluation(**kwargs):
    seen.update(kwargs)
    return "evaluated"

  result = _run(tmp_path, 2, final_evaluation=final_evaluation)
  assert result.evaluation == "evaluated"
  assert set(seen) == {"theta", "init_theta", "architecture", "task_sampler", "workdir"}


def test_meta_eval_runs_periodically_and_is_logged(tmp_path):
  calls = []

  def meta_eval(*, theta, step, architecture, task_sampler):
    del architecture, task_sampler
    calls.append(step)
    return {"score": float(sum(np.sum(x) for x in jax.tree.leaves(theta)))}

  _run(tmp_path, 5, meta_eval=meta_eval, meta_eval_every=2)
  assert calls == [2, 4, 5]
  logged = [line for line in writers.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
            if "meta_eval/score" in line]
  assert [line["step"] for line in logged] == [2, 4, 5]


def test_meta_eval_every_without_function_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="meta_eval"):
    _run(tmp_path, 2, meta_eval_every=2)


def test_unwritable_workdir_is_named(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(ValueError, match=str(blocker)):
    _run(blocker / "workdir", 2)


def test_bad_arguments_rejected(tmp_path):
  with pytest.raises(ValueError, match="log_every"):
    outer_loop.meta_train(task_sampler=fixed(quadratic(dim=4)), architecture=ff.ff(),
                          estimator=pes_lib.pes(), num_outer_steps=2, workdir=str(tmp_path),
                          wandb_mode="disabled", log_every=0)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
  _run(tmp_path, 4)  # checkpoints at steps 2 and 4
  latest = checkpoints.checkpoint_path(os.path.join(tmp_path, "checkpoints"), 4)
  with open(latest, "r+b") as f:
    f.truncate(os.path.getsize(latest) // 2)
  with caplog.at_level("WARNING"):
    result = _run(tmp_path, 6)
  assert "checkpoint_00000004" in caplog.text
  assert result.step == 6
  steps = [line["step"] for line in writers.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))]
  assert steps == [2, 4, 6]  # resumed from step 2: the records of steps 3-4 were dropped and logged again


def test_more_devices_than_present_is_an_error_naming_both_counts(tmp_path):
  too_many = jax.device_count() + 1
  with pytest.raises(ValueError, match=f"num_devices={too_many} but only {jax.device_count()} devices"):
    _run(tmp_path, 2, num_devices=too_many)
  assert checkpoints.latest_step(os.path.join(tmp_path, "checkpoints")) is None  # stopped before any work


def test_meta_train_returns_host_arrays(tmp_path):
  result = _run(tmp_path, 1)
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(result.theta))
