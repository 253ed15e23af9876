"""``combined``: a wrapper that averages the meta-gradients of several estimators.

Each estimator keeps its own state and tasks; ``estimate`` calls every one with its own key and returns the
weighted mean of their gradients. Mixing, e.g., low-variance TBPTT with unbiased PES trades bias for variance.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax

from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import objectives
from lopt.meta_trainers.base import GradientEstimator
from lopt.registry import register
from lopt.tasks.base import TaskFamily
from lopt.types import MetaParams, PRNGKey


@dataclasses.dataclass(frozen=True)
class Combined(GradientEstimator):
  """Weighted average of several estimators (weights normalised to sum to one)."""

  estimators: tuple[GradientEstimator, ...]
  weights: tuple[float, ...]

  def __post_init__(self):
    if not self.estimators or len(self.weights) != len(self.estimators) or min(self.weights) < 0:
      raise ValueError("combined needs at least one estimator and one non-negative weight per estimator.")
    total = sum(self.weights)
    if total <= 0:
      raise ValueError("combined needs a positive total weight.")
    object.__setattr__(self, "weights", tuple(w / total for w in self.weights))

  @property
  def num_tasks(self) -> int:
    return sum(e.num_tasks for e in self.estimators)

  def init(self, theta: MetaParams, key: PRNGKey, *, task_family: TaskFamily,
           learned_optimizer: LearnedOptimizer) -> tuple[Any, ...]:
    keys = jax.random.split(key, len(self.estimators))
    return tuple(e.init(theta, k, task_family=task_family, learned_optimizer=learned_optimizer)
                 for e, k in zip(self.estimators, keys))

  def estimate(self, theta: MetaParams, state: tuple[Any, ...], key: PRNGKey, *, task_family: TaskFamily,
               learned_optimizer: LearnedOptimizer) -> tuple[MetaParams, tuple[Any, ...], dict[str, Any]]:
    keys = jax.random.split(key, len(self.estimators))
    grads, states, metrics = [], [], {}
    for i, (est, s, k) in enumerate(zip(self.estimators, state, keys)):
      g, s, m = est.estimate(theta, s, k, task_family=task_family, learned_optimizer=learned_optimizer)
      grads.append(g)
      states.append(s)
      metrics.update({f"{i}_{type(est).__name__.lower()}/{name}": v for name, v in m.items()})
    grad = jax.tree.map(lambda *gs: sum(w * g for w, g in zip(self.weights, gs)), *grads)
    metrics["masked_tasks"] = sum(metrics[f"{i}_{type(e).__name__.lower()}/masked_tasks"]
                                  for i, e in enumerate(self.estimators))
    metrics["meta_loss"] = sum(w * metrics[f"{i}_{type(e).__name__.lower()}/meta_loss"]
                               for i, (w, e) in enumerate(zip(self.weights, self.estimators)))
    return objectives.finite_or_zero(grad), tuple(states), metrics


@register("estimator", "combined")
def combined(*, estimators: Sequence[GradientEstimator], weights: Sequence[float] | None = None) -> Combined:
  """Weighted average of several estimators' meta-gradients (each keeps its own tasks and state)."""
  estimators = tuple(estimators)
  return Combined(estimators=estimators, weights=tuple(weights) if weights is not None else (1.0,) * len(estimators))
