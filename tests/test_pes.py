"""PES against the exact gradient of the full unroll, and robustness to diverging tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.architectures import baselines
from lopt.meta_trainers import antithetic
from lopt.meta_trainers import pes as pes_lib
from lopt.meta_trainers import unroll as unroll_lib
from lopt.tasks import quadratic

HORIZON, TRUNCATION = 20, 5
FAMILY = quadratic(dim=4, noise_std=0.0)
ARCH = baselines.learnable_adam(learning_rate=0.05)
KW = dict(task_family=FAMILY, learned_optimizer=ARCH)
_JITTED = {}


def flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def exact_gradient(theta, start, horizon: int = HORIZON) -> np.ndarray:
  """Exact gradient of the mean normalised loss of a full ``horizon``-step unroll, averaged over the tasks."""

  def full_unroll_loss(th, task_state):
    _, losses = unroll_lib.unroll(th, task_state, jax.random.key(0), horizon, **KW)
    return jnp.mean(losses)

  return flat(jax.tree.map(lambda g: jnp.mean(g, axis=0),
                           jax.vmap(jax.grad(full_unroll_loss), in_axes=(None, 0))(theta, start)))


def episode_estimate(estimator, seed: int, *, start_of=lambda state: state.inner, num_truncations=None):
  """Mean of an estimator's estimates over one episode of every task, and the exact gradient on the same tasks.

  Args:
    estimator: an estimator over ``FAMILY`` and ``ARCH`` with ``stagger=False`` and horizon ``HORIZON``.
    seed: seeds the tasks and the estimates.
    start_of: the batch of task states (leading axis: tasks) the estimator starts from, given its initial state.
    num_truncations: estimates to average; default one episode of ``HORIZON // TRUNCATION`` truncations.

  Returns:
    ``(estimate, exact)`` as flat arrays.
  """
  theta = ARCH.init(jax.random.key(0))
  state = estimator.init(theta, jax.random.key(seed), **KW)
  start = start_of(state)
  if estimator not in _JITTED:  # one compilation per estimator configuration
    _JITTED[estimator] = jax.jit(lambda th, s, k: estimator.estimate(th, s, k, **KW))
  estimate = _JITTED[estimator]
  num_truncations = num_truncations or HORIZON // TRUNCATION
  total = jax.tree.map(jnp.zeros_like, theta)
  for j in range(num_truncations):
    grad, state, metrics = estimate(theta, state, jax.random.fold_in(jax.random.key(seed + 1), j))
    assert int(metrics["masked_tasks"]) == 0
    total = jax.tree.map(jnp.add, total, grad)
  return flat(total) / num_truncations, exact_gradient(theta, start)


def _pes_and_exact(num_tasks: int, seed: int, std: float = 0.01):
  """Mean PES estimate over one full episode of every task, and the exact gradient of the same objective."""
  estimator = pes_lib.pes(num_tasks=num_tasks, truncation_length=TRUNCATION, horizon=HORIZON, std=std,
                          stagger=False)
  # The + and - copies start identical.
  return episode_estimate(estimator, seed, start_of=lambda state: jax.tree.map(lambda x: x[0], state.inner))


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
    draws.append(antithetic.tree_normal(jax.random.split(key, 3)[1], theta, 0.1, 2))
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
  with pytest.raises(ValueError, match="truncation_length"):
    pes_lib.pes(truncation_length=0)
