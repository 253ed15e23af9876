"""The outer-validation loss reaches architectures that read it (Metz et al. 2020), in unrolls and in evaluation.

A spy architecture records, at every step, the ``loss`` and ``valid_loss`` its ``update`` was given. On a
noise-free quadratic the loss does not depend on the batch, so the validation loss computed at a step equals that
step's training loss: the recorded values must equal the training loss at steps 0, N, 2N, ... and stay constant
in between. Any break in the plumbing (not passed, zeros, stale, wrong cadence) changes them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.architectures.base import LearnedOptimizer
from lopt.evaluation import hooks, training
from lopt.meta_trainers import tbptt, unroll
from lopt.registry import lookup
from lopt.tasks import fixed, quadratic
from lopt.tasks.base import Task, TaskFamily

SLOTS = 16


def spy(reads_valid_loss: bool = True) -> LearnedOptimizer:
  def optimizer(theta, *, num_steps):
    del num_steps

    def init(params):
      del params
      return {"count": jnp.zeros([], jnp.int32), "loss": jnp.zeros(SLOTS), "valid": jnp.full(SLOTS, -1.0)}

    def update(grads, state, params=None, *, loss=None, valid_loss=None, **extra):
      del params, extra
      i = jnp.minimum(state["count"], SLOTS - 1)
      valid = jnp.asarray(-2.0 if valid_loss is None else valid_loss, jnp.float32)
      new = {"count": state["count"] + 1, "loss": state["loss"].at[i].set(loss),
             "valid": state["valid"].at[i].set(valid)}
      return jax.tree.map(lambda g: -theta["lr"] * g, grads), new

    return optax.GradientTransformationExtraArgs(init, update)

  return LearnedOptimizer(name="spy", init=lambda key: {"lr": jnp.asarray(0.05)}, optimizer=optimizer,
                          reads_valid_loss=reads_valid_loss)


def expected_valid(losses: np.ndarray, every: int) -> np.ndarray:
  return np.array([losses[(i // every) * every] for i in range(len(losses))])


@pytest.mark.parametrize("every", [1, 3])
def test_unroll_feeds_the_latest_validation_loss(every):
  family, arch = quadratic(dim=3), spy()
  theta = arch.init(jax.random.key(0))
  state = unroll.init_task_state(theta, jax.random.key(1), 20, task_family=family, learned_optimizer=arch)
  new, _ = jax.jit(lambda s: unroll.unroll(theta, s, jax.random.key(2), 7, task_family=family,
                                           learned_optimizer=arch, valid_every=every))(state)
  losses, valid = np.asarray(new.opt_state["loss"][:7]), np.asarray(new.opt_state["valid"][:7])
  assert len(set(np.round(losses, 6))) == 7  # the loss moves, so a stale value would show
  np.testing.assert_allclose(valid, expected_valid(losses, every), rtol=1e-6)


def test_unroll_does_not_feed_when_off_or_not_read():
  family = quadratic(dim=3)
  for arch, every in ((spy(), 0), (spy(reads_valid_loss=False), 3)):
    theta = arch.init(jax.random.key(0))
    state = unroll.init_task_state(theta, jax.random.key(1), 20, task_family=family, learned_optimizer=arch)
    new, _ = unroll.unroll(theta, state, jax.random.key(2), 4, task_family=family, learned_optimizer=arch,
                           valid_every=every)
    np.testing.assert_array_equal(np.asarray(new.opt_state["valid"][:4]), -2.0)


def test_meta_training_estimator_feeds_it():
  family, arch = quadratic(dim=3), spy()
  estimator = tbptt.tbptt(num_tasks=2, truncation_length=6, horizon=12)
  assert estimator.settings.valid_every == 10
  theta = arch.init(jax.random.key(0))
  kw = dict(task_family=family, learned_optimizer=arch)
  state = estimator.init(theta, jax.random.key(1), **kw)
  _, state, _ = estimator.estimate(theta, state, jax.random.key(2), **kw)
  for task in range(2):
    opt_state = jax.tree.map(lambda x: np.asarray(x[task]), state.opt_state)
    steps = int(opt_state["count"])
    assert steps >= 6
    losses, valid = opt_state["loss"][steps - 6:steps], opt_state["valid"][steps - 6:steps]
    np.testing.assert_allclose(valid, np.full(6, losses[0]), rtol=1e-6)  # one validation loss per truncation


def test_evaluation_feeds_it_for_architectures_that_read_it():
  family, arch = quadratic(dim=3), spy()
  theta = arch.init(jax.random.key(0))
  assert training.valid_every_for(arch) == training.VALID_EVERY
  assert training.valid_every_for(spy(reads_valid_loss=False)) == 0
  seen = {}

  def make(n):
    tx = arch.optimizer(theta, num_steps=n)

    def update(grads, state, params=None, **extra):
      seen["valid_loss"] = "valid_loss" in extra
      return tx.update(grads, state, params, **extra)

    return optax.GradientTransformationExtraArgs(tx.init, update)

  result = training.train_tasks(family, make, jax.random.key(3), num_tasks=2, num_steps=12, valid_every=4)
  assert seen["valid_loss"]
  assert result["train_loss"].shape == (2, 12)
  out = hooks.periodic_meta_eval(num_tasks=2, num_steps=8, compare_adam=False)(
      theta=theta, step=0, architecture=arch, task_sampler=fixed(family))
  assert np.isfinite(out["mean/final_train_loss"])


def test_per_tensor_reads_it_and_its_features_change_the_update():
  arch = lookup("architecture", "per_tensor")()
  assert arch.reads_valid_loss
  theta = jax.tree.map(lambda x: x + 0.1, arch.init(jax.random.key(0)))  # non-zero heads, so inputs matter
  params = {"w": jnp.ones((4, 3))}
  tx = arch.optimizer(theta, num_steps=10)
  state = tx.init(params)
  grads = {"w": jnp.full((4, 3), 0.1)}
  _, state = tx.update(grads, state, params, loss=1.0, valid_loss=1.0)  # features compare with earlier losses
  low, _ = tx.update(grads, state, params, loss=1.0, valid_loss=0.5)
  high, _ = tx.update(grads, state, params, loss=1.0, valid_loss=5.0)
  assert not np.allclose(np.asarray(low["w"]), np.asarray(high["w"]))


def test_family_without_validation_split_is_named():
  base = quadratic(dim=2)

  def task(cfg):
    inner = base.task(cfg)

    def batch(key, split):
      if split == "outer_valid":
        raise ValueError("no outer_valid split here")
      return inner.batch(key, split)

    return Task(init=inner.init, loss=inner.loss, batch=batch, normalize=inner.normalize)

  family = TaskFamily(name="no_valid_family", sample=base.sample, task=task)
  arch = spy()
  theta = arch.init(jax.random.key(0))
  state = unroll.init_task_state(theta, jax.random.key(1), 10, task_family=family, learned_optimizer=arch)
  with pytest.raises(ValueError, match="no_valid_family.*outer_valid"):
    unroll.unroll(theta, state, jax.random.key(2), 2, task_family=family, learned_optimizer=arch, valid_every=2)
  with pytest.raises(ValueError, match="no_valid_family"):
    training.train_tasks(family, lambda n: arch.optimizer(theta, num_steps=n), jax.random.key(0), num_tasks=1,
                         num_steps=2, valid_every=2)


def test_suite_evaluation_feeds_it():
  from lopt.evaluation import scoring, tuned_baselines

  arch = spy()
  theta = arch.init(jax.random.key(0))
  seen = []

  def make(n):
    tx = arch.optimizer(theta, num_steps=n)

    def update(grads, state, params=None, **extra):
      seen.append("valid_loss" in extra)
      return tx.update(grads, state, params, **extra)

    return optax.GradientTransformationExtraArgs(tx.init, update)

  scoring.evaluate_suite({"quadratic": quadratic(dim=3)}, baselines=tuned_baselines.default_baselines(names=["adam"]),
                         learned=make, learned_valid_every=4, num_steps=8, num_seeds=1, printer=lambda line: None)
  assert seen and all(seen)
