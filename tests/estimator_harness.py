"""An exact-gradient harness where every meta-gradient component matters, shared by the estimator tests.

The problem: noisy 4-d quadratics (log-uniform curvatures in [0.1, 10], a Gaussian target shift of std ``NOISE``
drawn at every batch) trained for ``HORIZON`` steps by a test-local optimizer whose theta is a per-coordinate log
step size and a per-coordinate momentum: two leaves of four components each, with sensitivities of the same order
(the momentum logit is scaled by ``MOMENTUM_SCALE`` so that both leaves' gradients have similar magnitude). The
noise makes the data matter: an antithetic pair whose copies see different batches differs by the noise, not by
the perturbation, and its estimate drowns.

References are exact, by autodiff through the unroll, on the estimator's own tasks (the ones it starts from) with
independently drawn data (the data-sampling error of that average is ~100x below the tolerances used):

- ``full_horizon_gradient``: the gradient of the mean normalised loss of the whole ``HORIZON``-step episode;
- ``truncated_gradient``: the mean over the episode's truncations of the gradient of each ``TRUNCATION``-step
  objective with the incoming state held constant (what TBPTT and truncated ES estimate).

Estimates and references are compared leaf by leaf (``leaf_cosines``, ``leaf_rel_errors``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import unroll as unroll_lib
from lopt.tasks import quadratic

DIM, HORIZON, TRUNCATION, NOISE = 4, 20, 5, 0.5
MOMENTUM_SCALE = 3.0


def hyper_momentum(learning_rates=(0.02, 0.05, 0.1, 0.2), momenta=(0.8, 0.6, 0.4, 0.2)) -> LearnedOptimizer:
  """Heavy-ball momentum with a learnable step size and momentum per coordinate of a ``DIM``-vector ``x``.

  Each coordinate starts from different hyperparameters, so the components of a leaf's gradient differ.
  """

  def init(key):
    del key
    momenta_ = np.asarray(momenta, np.float64)
    return {"log_lr": jnp.asarray(np.log(learning_rates), jnp.float32),
            "momentum": jnp.asarray(np.log(momenta_ / (1 - momenta_)) / MOMENTUM_SCALE, jnp.float32)}

  def optimizer(theta, *, num_steps):
    del num_steps
    lr, beta = jnp.exp(theta["log_lr"]), jax.nn.sigmoid(MOMENTUM_SCALE * theta["momentum"])

    def init_state(params):
      return {"m": jax.tree.map(jnp.zeros_like, params)}

    def update(grads, state, params=None, **extra):
      del params, extra
      m = jax.tree.map(lambda m, g: beta * m + g, state["m"], grads)
      return jax.tree.map(lambda v: -lr * v, m), {"m": m}

    return optax.GradientTransformationExtraArgs(init_state, update)

  return LearnedOptimizer(name="hyper_momentum", init=init, optimizer=optimizer)


FAMILY = quadratic(dim=DIM, noise_std=NOISE)
ARCH = hyper_momentum()
KW = dict(task_family=FAMILY, learned_optimizer=ARCH)


def theta0():
  return ARCH.init(jax.random.key(0))


def _full_loss(theta, task, key):
  _, losses = unroll_lib.unroll(theta, task, key, HORIZON, **KW)
  return jnp.mean(losses)


def _truncated_grad(theta, task, key):
  total = jax.tree.map(jnp.zeros_like, theta)
  for k in jax.random.split(key, HORIZON // TRUNCATION):
    loss = lambda th, t=task, k=k: jnp.mean(unroll_lib.unroll(th, t, k, TRUNCATION, **KW)[1])
    total = jax.tree.map(jnp.add, total, jax.grad(loss)(theta))
    task = jax.lax.stop_gradient(unroll_lib.unroll(theta, task, k, TRUNCATION, **KW)[0])
  return jax.tree.map(lambda g: g / (HORIZON // TRUNCATION), total)


# Jitted once per module (and per batch shape), not once per call.
_PER_TASK = {"full": jax.jit(jax.vmap(jax.grad(_full_loss), in_axes=(None, 0, 0))),
             "truncated": jax.jit(jax.vmap(_truncated_grad, in_axes=(None, 0, 0)))}


def _mean_over_tasks(kind: str, start: unroll_lib.TaskState, seed: int):
  keys = jax.random.split(jax.random.key(seed), start.step.shape[0])
  grads = _PER_TASK[kind](theta0(), start, keys)
  return jax.tree.map(lambda g: np.asarray(jnp.mean(g, axis=0), np.float64), grads)


def full_horizon_gradient(start: unroll_lib.TaskState, seed: int = 1000) -> dict:
  """Exact gradient of the mean normalised loss of a whole episode from ``start`` (a batch of tasks at step 0),
  averaged over the tasks, on data drawn from ``seed`` (independent of the estimator's)."""
  return _mean_over_tasks("full", start, seed)


def truncated_gradient(start: unroll_lib.TaskState, seed: int = 1000) -> dict:
  """Mean over an episode's truncations of the exact gradient of each K-step mean loss with the incoming state held
  constant (the unperturbed trajectory from ``start``), averaged over the tasks."""
  return _mean_over_tasks("truncated", start, seed)


def leaves(tree) -> dict[str, np.ndarray]:
  """Leaves by path name, as float64 flat arrays."""
  return {jax.tree_util.keystr(p): np.ravel(np.asarray(x, np.float64))
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def leaf_cosines(estimate, exact) -> dict[str, float]:
  """Cosine between estimate and exact, per leaf."""
  e, x = leaves(estimate), leaves(exact)
  return {k: float(e[k] @ x[k] / (np.linalg.norm(e[k]) * np.linalg.norm(x[k]) + 1e-30)) for k in x}


def leaf_rel_errors(estimate, exact) -> dict[str, float]:
  """``|estimate - exact| / |exact|``, per leaf."""
  e, x = leaves(estimate), leaves(exact)
  return {k: float(np.linalg.norm(e[k] - x[k]) / np.linalg.norm(x[k])) for k in x}


def episode_mean(estimator, seed: int, num_estimates: int | None = None):
  """Mean of an estimator's estimates over one episode (``HORIZON // TRUNCATION`` estimates by default), and its
  initial state.

  The estimator must use this harness's horizon and truncation and ``stagger=False`` so that the mean covers
  every truncation of every task's first episode once.
  """
  theta = theta0()
  state = init_state = estimator.init(theta, jax.random.key(seed), **KW)
  estimate = jax.jit(lambda th, s, k: estimator.estimate(th, s, k, **KW))
  num_estimates = num_estimates or HORIZON // TRUNCATION
  total = jax.tree.map(jnp.zeros_like, theta)
  for j in range(num_estimates):
    grad, state, metrics = estimate(theta, state, jax.random.fold_in(jax.random.key(seed + 1), j))
    assert int(metrics["masked_tasks"]) == 0, metrics
    total = jax.tree.map(jnp.add, total, grad)
  return jax.tree.map(lambda g: np.asarray(g, np.float64) / num_estimates, total), init_state
