"""Run directories written by lopt 0.1.0 (tests/fixtures/v0_1_*) still load and resume.

Each fixture is a 4-step run (quadratic(4), ff 8x8, pes or es with 2 tasks) made by lopt 0.1.0's
``experiments/meta_train.py``, with its operative ``config.gin`` and checkpoints of steps 2 and 4; the ``.npz`` files
hold the theta that 0.1.0 loaded from step 4 and the theta it reached when the run was resumed to step 6. The ES
estimator state changed layout in 0.2 (one shared state per antithetic pair): an ES run of 0.1 still loads its
trained optimizer, and resuming it fails with an error that says so and what to do.
"""

import os
import shutil

import jax
import numpy as np
import pytest

import lopt

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _flat(theta) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(theta)[0]}


def _expected(name: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(FIXTURES, name)) as data:
    return dict(data)


@pytest.mark.parametrize("estimator", ["pes", "es"])
def test_trained_optimizer_of_a_0_1_workdir_loads(estimator):
  trained = lopt.load_trained(os.path.join(FIXTURES, f"v0_1_{estimator}"))
  assert trained.step == 4 and trained.architecture.name == "ff"
  expected = _expected(f"v0_1_{estimator}_theta_step4.npz")
  got = _flat(trained.theta)
  assert sorted(got) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_0_1_pes_workdir_resumes_to_the_same_theta(tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(os.path.join(FIXTURES, "v0_1_pes"), workdir)
  result = lopt.runs.meta_train_in_workdir(workdir, gin_configs=[os.path.join(workdir, "config.gin")],
                                           gin_bindings=["meta_train.num_outer_steps = 6"], wandb_mode="disabled")
  assert result.step == 6
  expected = _expected("v0_1_pes_theta_step6_resumed.npz")
  got = _flat(result.theta)
  for key, value in expected.items():
    # atol: the fixture was computed at XLA's default optimisation level, the suite compiles at level 0
    # (conftest.py): 2e-7 apart, against ~1e-3 that one outer step moves theta, so a wrong resume still fails.
    np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_0_1_es_workdir_says_the_es_state_format_changed(tmp_path):
  # lopt 0.2's truncated ES keeps one shared inner state per pair; 0.1 kept a drifting + and - state.
  workdir = str(tmp_path / "run")
  shutil.copytree(os.path.join(FIXTURES, "v0_1_es"), workdir)
  with pytest.raises(lopt.checkpoints.CheckpointError, match="ES estimator state changed format") as info:
    lopt.runs.meta_train_in_workdir(workdir, gin_configs=[os.path.join(workdir, "config.gin")],
                                    gin_bindings=["meta_train.num_outer_steps = 6"], wandb_mode="disabled")
  assert "new workdir" in str(info.value) and "load_trained" in str(info.value)
