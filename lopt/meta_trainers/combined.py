"""``combined``: a wrapper that averages the meta-gradients of several estimators.

Each estimator keeps its own state and tasks; ``estimate`` calls every one with its own key and returns the
weighted mean of their gradients. Mixing, e.g., low-variance TBPTT with unbiased PES trades bias for variance.
Metrics of part ``i`` are prefixed ``<i>_<part name>/``.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax

from lopt import arguments
from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import objectives
from lopt.meta_trainers.estimator import GradientEstimator
from lopt.registry import register
from lopt.tasks.base import TaskFamily
from lopt.types import MetaParams, PRNGKey


@register("estimator", "combined")
def combined(*, estimators: Sequence[GradientEstimator], weights: Sequence[float] | None = None) -> GradientEstimator:
  """Weighted average of several estimators' meta-gradients (each keeps its own tasks and state).

  Args:
    estimators: the parts.
    weights: one non-negative weight per part (normalised to sum to one); default equal weights.
  """
  if isinstance(estimators, GradientEstimator) or not isinstance(estimators, Sequence) or not estimators or not all(
      isinstance(e, GradientEstimator) for e in estimators):
    raise arguments.ArgumentError("estimators.combined.estimators",
                                  f"must be a non-empty list of estimators (e.g. [@estimators.pes()]), got "
                                  f"{estimators!r}.")
  parts = tuple(estimators)
  weights = (1.0,) * len(parts) if weights is None else arguments.reals("estimators.combined.weights", weights,
                                                                       minimum=0.0)
  if len(weights) != len(parts) or sum(weights) <= 0:
    raise arguments.ArgumentError("estimators.combined.weights", f"needs one non-negative weight per estimator "
                                  f"({len(parts)}) with a positive sum, got {list(weights)}.")
  weights = tuple(w / sum(weights) for w in weights)
  prefixes = [f"{i}_{e.name}" for i, e in enumerate(parts)]

  def init(theta: MetaParams, key: PRNGKey, *, task_family: TaskFamily,
           learned_optimizer: LearnedOptimizer) -> tuple[Any, ...]:
    keys = jax.random.split(key, len(parts))
    return tuple(e.init(theta, k, task_family=task_family, learned_optimizer=learned_optimizer)
                 for e, k in zip(parts, keys))

  def estimate(theta: MetaParams, state: tuple[Any, ...], key: PRNGKey, *, task_family: TaskFamily,
               learned_optimizer: LearnedOptimizer) -> tuple[MetaParams, tuple[Any, ...], dict[str, Any]]:
    keys = jax.random.split(key, len(parts))
    grads, states, metrics = [], [], {}
    for est, prefix, s, k in zip(parts, prefixes, state, keys):
      g, s, m = est.estimate(theta, s, k, task_family=task_family, learned_optimizer=learned_optimizer)
      grads.append(g)
      states.append(s)
      metrics.update({f"{prefix}/{name}": v for name, v in m.items()})
    grad = jax.tree.map(lambda *gs: sum(w * g for w, g in zip(weights, gs)), *grads)
    metrics["masked_tasks"] = sum(metrics[f"{p}/masked_tasks"] for p in prefixes)
    metrics["meta_loss"] = sum(w * metrics[f"{p}/meta_loss"] for w, p in zip(weights, prefixes))
    return objectives.finite_or_zero(grad), tuple(states), metrics

  def task_axes(state: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(e.task_axes(s) for e, s in zip(parts, state))

  return GradientEstimator(name="combined", num_tasks=sum(e.num_tasks for e in parts), init=init,
                           estimate=estimate, task_axes=task_axes, settings=(parts, weights))
