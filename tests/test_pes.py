"""PES against the exact gradient of the full unroll, and robustness to diverging tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.architectures import baselines
from lopt.meta_trainers import pes as pes_lib
from lopt.meta_trainers import unroll as unroll_lib
from lopt.tasks import quadratic

HORIZON, TRUNCATION = 20, 5


def _pes_and_exact(num_tasks: int, seed: int, std: float = 0.01):
  """Mean PES estimate over one full episode of every task, and the exact gradient of the same objective."""
  family = quadratic(dim=4, noise_std=0.0)
  arch = baselines.learnable_adam(learning_rate=0.05)
  theta = arch.init(jax.random.key(0))
  estimator = pes_lib.pes(num_tasks=num_tasks, truncation_length=TRUNCATION, horizon=HORIZON, std=std,
                          stagger=False)
  kw = dict(task_family=family, learned_optimizer=arch)
  state = estimator.init(theta, jax.random.key(seed), **kw)
  start = jax.tree.map(lambda x: x[0], state.inner)  # the + and - copies start identical

  estimate = jax.jit(lambda th, s, k: estimator.estimate(th, s, k, **kw))
  total = jax.tree.map(jnp.zeros_like, theta)
  for j in range(HORIZON // TRUNCATION):
    grad, state, metrics = estimate(theta, state, jax.random.fold_in(jax.random.key(seed + 1), j))
    assert int(metrics["masked_tasks"]) == 0
    total = jax.tree.map(jnp.add, total, grad)
  pes_grad = jax.tree.map(lambda g: g / (HORIZON // TRUNCATION), total)

  def full_unroll_loss(th, task_state):
    _, losses = unroll_lib.unroll(th, task_state, jax.random.key(0), HORIZON, **kw)
    return jnp.mean(losses)

  exact = jax.vmap(jax.grad(full_unroll_loss), in_axes=(None, 0))(theta, start)
  exact = jax.tree.map(lambda g: jnp.mean(g, axis=0), exact)
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  return flat(pes_grad), flat(exact)


def _cosine(a, b):
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_pes_matches_exact_full_horizon_gradient():
  est, exact = _pes_and_exact(num_tasks=1024, seed=1)
  assert _cosine(est, exact) >= 0.99
  assert np.linalg.norm(est - exact) <= 0.15 * np.linalg.norm(exact)


def test_pes_error_shrinks_with_samples():
  errors = {}
  for n in (32, 1024):
    runs = [_pes_and_exact(num_tasks=n, seed=s) for s in (11, 12)]
    errors[n] = np.mean([np.linalg.norm(e - x) / np.linalg.norm(x) for e, x in runs])
  assert errors[1024] < 0.5 * errors[32]


def test_pes_resets_accumulator_at_horizon():
  family = quadratic(dim=3)
  arch = baselines.learnable_adam()
  theta = arch.init(jax.random.key(0))
  estimator = pes_lib.pes(num_tasks=2, truncation_length=5, horizon=10, stagger=False, std=0.1)
  kw = dict(task_family=family, learned_optimizer=arch)
  state = estimator.init(theta, jax.random.key(0), **kw)
  draws = []
  for j in range(3):
    key = jax.random.key(j)
    draws.append(pes_lib._tree_normal(jax.random.split(key, 3)[1], theta, 0.1, 2))  # pylint: disable=protected-access
    _, state, metrics = estimator.estimate(theta, state, key, **kw)
    if j == 1:  # the second truncation of the episode carries both perturbations
      expected = jax.tree.map(jnp.add, draws[0], draws[1])
      jax.tree.map(np.testing.assert_allclose, state.accumulator, expected)
  # The third truncation starts a new episode: its accumulator holds only that truncation's perturbation.
  assert int(metrics["resets"]) == 2
  assert np.all(np.asarray(state.inner.step) == 5)
  jax.tree.map(np.testing.assert_allclose, state.accumulator, draws[2])


def test_diverging_task_is_masked_and_gradient_finite():
  family = quadratic(dim=4)
  arch = baselines.learnable_adam(learning_rate=1e3)  # far too large: losses explode
  theta = arch.init(jax.random.key(0))
  estimator = pes_lib.pes(num_tasks=4, truncation_length=5, horizon=20, max_loss=10.0)
  kw = dict(task_family=family, learned_optimizer=arch)
  state = estimator.init(theta, jax.random.key(0), **kw)
  grad, state, metrics = estimator.estimate(theta, state, jax.random.key(1), **kw)
  assert int(metrics["masked_tasks"]) == 4
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))
  # Masked tasks restart at the next truncation.
  assert np.all(np.asarray(state.inner.step) >= np.asarray(state.inner.horizon))


def test_invalid_hyperparameters_rejected():
  with pytest.raises(ValueError, match="std"):
    pes_lib.pes(std=0.0)
  with pytest.raises(ValueError, match="positive"):
    pes_lib.pes(truncation_length=0)
