"""``pes``: antithetic Persistent Evolution Strategies (Vicol et al. 2021, arXiv 2112.13835).

Each task keeps two inner states, one trained with theta + eps and one with theta - eps, and an accumulator xi of
all perturbations applied since its episode began. Every truncation draws fresh eps, adds it to xi, unrolls both
states K steps, and estimates ``xi * (L+ - L-) / (2 std^2)``. Because xi carries the perturbations of earlier
truncations, the estimate is unbiased for the full-horizon (Gaussian-smoothed) objective at the cost of one
truncation. When a task reaches its horizon both states restart from a fresh task and xi is reset to zero.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import antithetic
from lopt.meta_trainers import unroll as unroll_lib
from lopt.meta_trainers.estimator import GradientEstimator
from lopt.registry import register
from lopt.tasks.base import TaskFamily
from lopt.types import MetaParams, PRNGKey


class PESState(NamedTuple):
  """Inner states with leading axes ``(2, num_tasks)`` (sign, task) and accumulators with ``(num_tasks,)``."""

  inner: unroll_lib.TaskState
  accumulator: MetaParams


@register("estimator", "pes")
def pes(*, num_tasks: int = 8, truncation_length: int = 10, horizon: int = 200, std: float = 0.01,
        stagger: bool = True, meta_loss_split: str = "train", valid_every: int = 10, max_loss: float = 1e3,
        loss_clip: float | None = 10.0, objective: str = "mean", schedule: str = "constant",
        min_horizon: int | None = None, diff_clip: float | None = None) -> GradientEstimator:
  """Antithetic Persistent Evolution Strategies over truncated unrolls (unbiased for the full horizon).

  Args:
    num_tasks: tasks trained in parallel (each with a + and a - copy).
    truncation_length: inner steps per estimate (K).
    horizon: inner steps per episode (T), rounded up to a multiple of K; the longest for ``"log_uniform"``.
    std: standard deviation of the perturbations of theta.
    stagger: start the first episodes at different points so that tasks do not all reset together.
    meta_loss_split: data split scoring each inner step (``"train"`` or ``"outer_valid"``).
    valid_every: inner steps between outer-validation losses fed as ``valid_loss=`` to architectures that read
      it (``per_tensor``); 0: never.
    max_loss: a task whose normalised loss exceeds this (or is not finite) is masked out and restarted.
    loss_clip: each step's normalised loss is clipped to this before averaging.
    objective: ``"mean"`` or ``"final"`` (see ``objectives``).
    schedule: ``"constant"``, ``"log_uniform"`` or ``"never_ending"`` (see ``truncation``).
    min_horizon: shortest episode of the ``"log_uniform"`` schedule.
    diff_clip: optional bound on ``|L+ - L-|``.
  """
  settings, perturbation = antithetic.settings(
      "estimators.pes", std=std, loss_clip=loss_clip, diff_clip=diff_clip, num_tasks=num_tasks,
      truncation_length=truncation_length, horizon=horizon, schedule=schedule, min_horizon=min_horizon,
      stagger=stagger, objective=objective, meta_loss_split=meta_loss_split, max_loss=max_loss,
      valid_every=valid_every)
  episodes = settings.episodes
  n = settings.num_tasks

  def init(theta: MetaParams, key: PRNGKey, *, task_family: TaskFamily,
           learned_optimizer: LearnedOptimizer) -> PESState:
    inner = antithetic.init_pairs(theta, key, episodes, num_tasks=n, copies=1, stagger=settings.stagger,
                                  task_family=task_family, learned_optimizer=learned_optimizer)
    accumulator = jax.tree.map(lambda x: jnp.zeros((n,) + jnp.shape(x), jnp.result_type(x)), theta)
    return PESState(inner=inner, accumulator=accumulator)

  def estimate(theta: MetaParams, state: PESState, key: PRNGKey, *, task_family: TaskFamily,
               learned_optimizer: LearnedOptimizer) -> tuple[MetaParams, PESState, dict[str, Any]]:
    reset_key, noise_key, unroll_key = jax.random.split(key, 3)
    kw = dict(task_family=task_family, learned_optimizer=learned_optimizer)
    inner, done = unroll_lib.reset_finished(theta, state.inner, reset_key, episodes, **kw)
    # A restarted episode owes nothing to earlier perturbations.
    accumulator = jax.tree.map(
        lambda a: jnp.where(done.reshape(done.shape + (1,) * (a.ndim - 1)), 0.0, a).astype(a.dtype),
        state.accumulator)
    eps = antithetic.tree_normal(noise_key, theta, perturbation.std, n)
    accumulator = jax.tree.map(jnp.add, accumulator, eps)
    grad, inner, _, metrics = antithetic.truncation_step(settings, perturbation, theta, inner, eps, accumulator,
                                                         unroll_key, copies=1, **kw)
    metrics["resets"] = jnp.sum(done)
    return grad, PESState(inner=inner, accumulator=accumulator), metrics

  return GradientEstimator(name="pes", num_tasks=n, init=init, estimate=estimate,
                           settings=(settings, perturbation))
