"""A meta-trained optimizer as the outer optimizer: it reads the meta-loss, resumes exactly, refuses a bad theta."""

import os
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import checkpoints, config, writers
from lopt.architectures import ff
from lopt.meta_trainers import outer_loop
from lopt.meta_trainers import pes as pes_lib
from lopt.runs import learned_meta_optimizer
from lopt.tasks import fixed, quadratic

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "v0_1_pes")  # an ff trained by lopt 0.1.0


@pytest.fixture
def trained_workdir(tmp_path):
  path = tmp_path / "trained"
  shutil.copytree(FIXTURE, path)
  return str(path)


def _run(workdir, num_outer_steps, meta_optimizer):
  return outer_loop.meta_train(
      task_sampler=fixed(quadratic(dim=4)), architecture=ff.ff_small(hidden_sizes=(4,)),
      estimator=pes_lib.pes(num_tasks=2, truncation_length=5, horizon=20), meta_optimizer=meta_optimizer,
      num_outer_steps=num_outer_steps, workdir=str(workdir), wandb_mode="disabled", log_every=1, checkpoint_every=2)


def loss_recorder() -> optax.GradientTransformationExtraArgs:
  """An outer optimizer that takes Adam steps and records every ``loss=`` it is given."""
  adam = optax.adam(1e-2)

  def init(params):
    return {"adam": adam.init(params), "losses": jnp.zeros(8), "count": jnp.zeros([], jnp.int32)}

  def update(grads, state, params=None, *, loss=None, **extra):
    del extra
    updates, adam_state = adam.update(grads, state["adam"], params)
    losses = state["losses"].at[state["count"]].set(loss)
    return updates, {"adam": adam_state, "losses": losses, "count": state["count"] + 1}

  return optax.GradientTransformationExtraArgs(init, update)


def test_outer_optimizer_receives_the_meta_loss(tmp_path):
  recorder = loss_recorder()
  _run(tmp_path, 4, recorder)
  target = recorder.init(ff.ff_small(hidden_sizes=(4,)).init(jax.random.key(0)))
  state, _ = checkpoints.restore_entry(str(tmp_path / "checkpoints"), "outer_opt_state", target)
  logged = [line["meta_loss"] for line in writers.read_jsonl(str(tmp_path / "metrics.jsonl"))]
  assert int(state["count"]) == 4
  np.testing.assert_allclose(np.asarray(state["losses"][:4]), logged, rtol=1e-4)


@pytest.mark.slow  # three meta_train runs (~17 s); the outer state is checkpointed like Adam's, whose resume is tested
def test_learned_outer_optimizer_trains_and_resumes_bit_exactly(tmp_path, trained_workdir):
  make = lambda: learned_meta_optimizer(workdir=trained_workdir, num_steps=6)
  init_theta = ff.ff_small(hidden_sizes=(4,)).init(jax.random.split(jax.random.key(0), 3)[0])
  straight = _run(tmp_path / "straight", 6, make())
  _run(tmp_path / "split", 4, make())
  resumed = _run(tmp_path / "split", 6, make())
  moved = sum(float(np.abs(np.asarray(a) - np.asarray(b)).sum())
              for a, b in zip(jax.tree.leaves(straight.theta), jax.tree.leaves(init_theta)))
  assert moved > 0
  for a, b in zip(jax.tree.leaves(straight.theta), jax.tree.leaves(resumed.theta)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_from_gin(trained_workdir):
  with config.isolated():
    gin.clear_config()
    config.parse([], [f"learned_meta_optimizer.workdir = '{trained_workdir}'", "learned_meta_optimizer.num_steps = 5"])
    tx = gin.get_configurable("learned_meta_optimizer")()
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params, loss=jnp.asarray(1.0))
  assert np.all(np.asarray(updates["w"]) < 0)


def test_theta_that_does_not_fit_is_named(trained_workdir):
  path = os.path.join(trained_workdir, "config.gin")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  with open(path, "w", encoding="utf-8") as f:
    f.write(text.replace("ff.hidden_sizes = (8, 8)", "ff.hidden_sizes = (16,)"))
  with pytest.raises(checkpoints.CheckpointError, match="does not fit the architecture ff"):
    learned_meta_optimizer(workdir=trained_workdir, num_steps=5)
  with pytest.raises(ValueError, match="learned_meta_optimizer.num_steps"):
    learned_meta_optimizer(workdir=trained_workdir, num_steps=0)


def test_pretrained_outer_optimizer_and_exactly_one_source(trained_workdir):
  import lopt

  tx = learned_meta_optimizer(pretrained=lopt.pretrained.names()[0], num_steps=5)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params, loss=jnp.asarray(1.0))
  assert np.all(np.asarray(updates["w"]) < 0)
  with pytest.raises(ValueError, match="exactly one"):
    learned_meta_optimizer(num_steps=5)
  with pytest.raises(ValueError, match="exactly one"):
    learned_meta_optimizer(workdir=trained_workdir, pretrained="ff_v1", num_steps=5)


@pytest.mark.slow  # 154 s on the loaded 2-core machine (compiling lstm_hyper as the outer optimizer dominates)
def test_self_training_with_a_loss_reading_outer_optimizer(tmp_path):
  """lstm_hyper, whose update reads ``loss=``, as the outer optimizer (built as ``learned_meta_optimizer`` builds
  one): its loss buffer is exactly the logged meta-losses folded in, one per outer step."""
  from lopt.architectures import lstm_hyper, velo_features

  outer = lstm_hyper.lstm_hyper()
  outer_theta = outer.init(jax.random.key(5))
  make = lambda: optax.chain(optax.with_extra_args_support(optax.clip_by_global_norm(1.0)),
                             outer.optimizer(outer_theta, num_steps=3))
  _run(tmp_path, 3, make())
  target = make().init(ff.ff_small(hidden_sizes=(4,)).init(jax.random.key(0)))
  state, _ = checkpoints.restore_entry(str(tmp_path / "checkpoints"), "outer_opt_state", target)
  logged = [line["meta_loss"] for line in writers.read_jsonl(str(tmp_path / "metrics.jsonl"))]
  assert len(logged) == 3 and len(set(logged)) == 3
  buffer = velo_features.init_loss_buffer()
  for loss in logged:
    buffer = velo_features.update_loss_buffer(buffer, loss, velo_features.loss_decays(3))
  got = state[1].loss
  assert int(got["count"]) == 3
  np.testing.assert_allclose(np.asarray(got["means"]), np.asarray(buffer["means"]), rtol=1e-4)
