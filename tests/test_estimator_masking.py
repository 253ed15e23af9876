"""Masked tasks: PES/ES (``antithetic.truncation_step``) and TBPTT average over the valid task slots only, and an
antithetic pair counts only when both of its copies are valid.

The problem is built so that every slot's objective is known in closed form. The "optimizer" ignores gradients and
moves the scalar parameter by theta each step (``x_{k+1} = x_k + w``); the task's loss is ``a * x`` with a per-slot
slope ``a``. Over a K-step truncation scored on the training loss, the mean objective of a slot is
``a * (x0 + w (K - 1) / 2)``. Slots are masked by giving them an objective above ``max_loss``: one slot whose two
copies both exceed it, and one whose ``-`` copy alone does (so a rule counting a pair when one copy is valid gives a
different answer). Every reference below is computed from those formulas, not by the estimators' code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import antithetic, tbptt
from lopt.meta_trainers import unroll as unroll_lib
from lopt.meta_trainers.truncation import Truncation
from lopt.tasks.base import Task, TaskFamily

K, STD = 4, 0.5
W = 1.0
# Per slot: slope a and start x0. Slot 2 is far above the bound for both signs; slots 3 and 4 sit near it, so their
# + and - copies straddle it (see _antithetic_case).
SLOPES = np.array([1.0, 2.0, 50.0, 1.0, 1.0], np.float32)
STARTS = np.array([0.5, -1.0, 1.0, 5.0, 5.0], np.float32)


def _family() -> TaskFamily:
  def task(cfg):
    return Task(init=lambda key: {"x": jnp.zeros([])},
                loss=lambda params, key, batch: cfg["a"] * params["x"],
                batch=lambda key, split: jnp.zeros([]), normalize=lambda loss: loss)

  return TaskFamily(name="linear_slope", sample=lambda key: {"a": jnp.ones([])}, task=task)


def _mover() -> LearnedOptimizer:
  """Moves every parameter by theta["w"] per step, whatever the gradient."""

  def optimizer(theta, *, num_steps):
    del num_steps
    return optax.GradientTransformationExtraArgs(
        lambda params: optax.EmptyState(),
        lambda grads, state, params=None, **extra: (jax.tree.map(lambda g: jnp.ones_like(g) * theta["w"], grads),
                                                     state))

  return LearnedOptimizer(name="mover", init=lambda key: {"w": jnp.asarray(W)}, optimizer=optimizer)


def _slots(lead: tuple[int, ...]) -> unroll_lib.TaskState:
  """Task states with the slopes and starts above, broadcast over the ``lead`` axes (e.g. the sign)."""
  n = len(SLOPES)
  shape = lead + (n,)
  return unroll_lib.TaskState(cfg={"a": jnp.broadcast_to(SLOPES, shape)},
                              params={"x": jnp.broadcast_to(STARTS, shape)},
                              opt_state=optax.EmptyState(), step=jnp.zeros(shape, jnp.int32),
                              horizon=jnp.full(shape, 100, jnp.int32))


def _objective(w):
  """Mean training loss of a K-step truncation of every slot under step ``w`` (array of slots)."""
  return SLOPES * (STARTS + w * (K - 1) / 2)


def _antithetic_case():
  # Slot 3's + copy has the larger objective, slot 4's - copy: a bound between them masks one copy of each.
  eps = np.array([0.3, -0.2, 0.4, 0.5, -0.5], np.float32)
  return eps, _objective(W + eps), _objective(W - eps)


def test_antithetic_average_counts_valid_pairs_only():
  eps, plus, minus = _antithetic_case()
  max_loss = 7.0  # slots 0, 1 valid; slot 2 masked; slot 3's + copy and slot 4's - copy masked, the others not
  assert max(plus[:2].max(), minus[:2].max()) < max_loss < min(plus[2], minus[2])
  assert minus[3] < max_loss < plus[3] and plus[4] < max_loss < minus[4]
  valid = np.array([True, True, False, False, False])
  settings = Truncation(num_tasks=5, truncation_length=K, horizon=100, max_loss=max_loss, valid_every=0)
  perturbation = antithetic.Perturbation(std=STD, loss_clip=None)
  eps_tree = {"w": jnp.asarray(eps)}
  grad, inner, got_valid, metrics = jax.jit(
      lambda: antithetic.truncation_step(settings, perturbation, {"w": jnp.asarray(W)}, _slots((2,)), eps_tree,
                                         eps_tree, jax.random.key(0), copies=1, task_family=_family(),
                                         learned_optimizer=_mover()))()
  np.testing.assert_array_equal(np.asarray(got_valid), valid)
  # By hand: sum over the valid pairs of eps (L+ - L-) / (2 std^2), divided by the number of valid pairs (2 of 5).
  expected = np.sum((eps * (plus - minus) / (2 * STD**2))[valid]) / valid.sum()
  np.testing.assert_allclose(float(grad["w"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["meta_loss"]), np.mean(((plus + minus) / 2)[valid]), rtol=1e-5)
  assert int(metrics["masked_tasks"]) == 3
  # Masked slots restart at the next truncation (their step is set to the horizon), valid ones continue.
  np.testing.assert_array_equal(np.asarray(inner.step[0]), np.where(valid, K, 100))


def test_tbptt_average_counts_valid_tasks_only():
  objective = _objective(W)
  max_loss = 10.0
  valid = objective < max_loss
  assert valid.tolist() == [True, True, False, True, True]
  estimator = tbptt.tbptt(num_tasks=5, truncation_length=K, horizon=100, max_loss=max_loss, valid_every=0)
  grad, tasks, metrics = jax.jit(lambda: estimator.estimate({"w": jnp.asarray(W)}, _slots(()), jax.random.key(0),
                                                            task_family=_family(), learned_optimizer=_mover()))()
  # d/dw of a (x0 + w (K - 1) / 2) is a (K - 1) / 2; averaged over the 4 valid tasks, not the 5 slots.
  expected = np.sum((SLOPES * (K - 1) / 2)[valid]) / valid.sum()
  np.testing.assert_allclose(float(grad["w"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["meta_loss"]), np.mean(objective[valid]), rtol=1e-5)
  assert int(metrics["masked_tasks"]) == 1
  np.testing.assert_array_equal(np.asarray(tasks.step), np.where(valid, K, 100))
