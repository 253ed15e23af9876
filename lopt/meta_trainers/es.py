"""``es``: antithetic Evolution Strategies over one truncation or over the full horizon.

Each task is trained by ``num_pairs`` antithetic pairs that share its configuration and data; the estimate is
``eps * (L(theta + eps) - L(theta - eps)) / (2 std^2)`` averaged over pairs and tasks. It needs no gradient through
the inner updates, so it copes with chaotic or non-differentiable inner training.

- Truncated (default): each pair persists across truncations like PES's, but only the current truncation's
  perturbation multiplies the loss difference, so the estimate ignores the effect of earlier truncations'
  perturbations: biased towards short horizons like TBPTT, at the cost of one truncation.
- ``full_horizon=True``: every estimate trains fresh tasks for the whole (constant) horizon. Unbiased for the
  Gaussian-smoothed full-horizon objective, at the cost of a full unroll per estimate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import antithetic, truncation
from lopt.meta_trainers import unroll as unroll_lib
from lopt.registry import register
from lopt.tasks.base import TaskFamily
from lopt.types import MetaParams, PRNGKey


class ESState(NamedTuple):
  """Inner states with leading axes ``(2, num_tasks * num_pairs)``; unused (fresh tasks) with ``full_horizon``."""

  inner: unroll_lib.TaskState


@dataclasses.dataclass(frozen=True)
class ES(truncation.TruncatedEstimator):
  """Antithetic ES.

  Attributes:
    num_tasks_: tasks trained in parallel.
    num_pairs: antithetic pairs per task (each pair costs two unrolls).
    truncation_length: inner steps per estimate (K); ignored with ``full_horizon``.
    horizon: inner steps per episode, rounded up to a multiple of K.
    std: standard deviation of the perturbations of theta.
    full_horizon: unroll fresh tasks over the whole horizon instead of one truncation.
    stagger: start the first episodes at different points (truncated mode).
    meta_loss_split: ``"train"`` or ``"outer_valid"``.
    objective: ``"mean"`` or ``"final"``.
    schedule: ``"constant"``, ``"log_uniform"`` or ``"never_ending"`` (only ``"constant"`` with full_horizon).
    min_horizon: shortest episode of ``"log_uniform"``.
    max_loss: bound on the normalised objective beyond which a pair is masked and restarted.
    loss_clip: each step's normalised loss is clipped to this before reducing.
    diff_clip: optional bound on ``|L+ - L-|``.
  """

  num_tasks_: int = 8
  num_pairs: int = 1
  truncation_length: int = 10
  horizon: int = 200
  std: float = 0.01
  full_horizon: bool = False
  stagger: bool = True
  meta_loss_split: str = "train"
  objective: str = "mean"
  schedule: str = "constant"
  min_horizon: int | None = None
  max_loss: float = 1e3
  loss_clip: float | None = 10.0
  diff_clip: float | None = None

  def __post_init__(self):
    if self.num_tasks_ < 1 or self.num_pairs < 1 or self.std <= 0:
      raise ValueError("es needs num_tasks >= 1, num_pairs >= 1 and std > 0, got "
                       f"{self.num_tasks_}, {self.num_pairs} and {self.std}.")
    if self.full_horizon and self.schedule != "constant":
      raise ValueError(f"es with full_horizon needs the 'constant' schedule, got '{self.schedule}'.")
    self._check_truncation()

  def _pairs(self, theta, key, stagger, **kw) -> unroll_lib.TaskState:
    return antithetic.init_pairs(theta, key, self.truncation_schedule, num_tasks=self.num_tasks,
                                 copies=self.num_pairs, stagger=stagger, **kw)

  def init(self, theta: MetaParams, key: PRNGKey, *, task_family: TaskFamily,
           learned_optimizer: LearnedOptimizer) -> ESState:
    kw = dict(task_family=task_family, learned_optimizer=learned_optimizer)
    if self.full_horizon:
      # The state only fixes shapes for checkpoints; every estimate starts fresh tasks.
      return ESState(inner=self._pairs(theta, key, False, **kw))
    return ESState(inner=self._pairs(theta, key, self.stagger, **kw))

  def estimate(self, theta: MetaParams, state: ESState, key: PRNGKey, *, task_family: TaskFamily,
               learned_optimizer: LearnedOptimizer) -> tuple[MetaParams, ESState, dict[str, Any]]:
    reset_key, noise_key, unroll_key = jax.random.split(key, 3)
    kw = dict(task_family=task_family, learned_optimizer=learned_optimizer)
    slots = self.num_tasks * self.num_pairs
    eps = antithetic.tree_normal(noise_key, theta, self.std, slots)
    if self.full_horizon:
      inner = self._pairs(theta, reset_key, False, **kw)
      config = dataclasses.replace(self, truncation_length=self.horizon)
      done = jnp.ones((slots,), bool)
    else:
      inner, done = unroll_lib.reset_finished(theta, state.inner, reset_key, self.truncation_schedule,
                                              copies=self.num_pairs, **kw)
      config = self
    grad, inner, _, metrics = antithetic.truncation_step(config, theta, inner, eps, eps, unroll_key,
                                                         copies=self.num_pairs, **kw)
    metrics["resets"] = jnp.sum(done)
    return grad, ESState(inner=inner), metrics


@register("estimator", "es")
def es(*, num_tasks: int = 8, num_pairs: int = 1, truncation_length: int = 10, horizon: int = 200,
       std: float = 0.01, full_horizon: bool = False, stagger: bool = True, meta_loss_split: str = "train",
       objective: str = "mean", schedule: str = "constant", min_horizon: int | None = None,
       max_loss: float = 1e3, loss_clip: float | None = 10.0, diff_clip: float | None = None) -> ES:
  """Antithetic ES over one truncation (biased, cheap) or the full horizon (unbiased, one full unroll)."""
  return ES(num_tasks_=num_tasks, num_pairs=num_pairs, truncation_length=truncation_length, horizon=horizon,
            std=std, full_horizon=full_horizon, stagger=stagger, meta_loss_split=meta_loss_split,
            objective=objective, schedule=schedule, min_horizon=min_horizon, max_loss=max_loss,
            loss_clip=loss_clip, diff_clip=diff_clip)
