"""``es``: antithetic Evolution Strategies over one truncation or over the full horizon.

Each task is trained by ``num_pairs`` antithetic pairs that share its configuration and data; the estimate is
``eps * (L(theta + eps) - L(theta - eps)) / (2 std^2)`` averaged over pairs and tasks. It needs no gradient through
the inner updates, so it copes with chaotic or non-differentiable inner training.

- Truncated (default): each pair persists across truncations as *one* inner state. A truncation starts both signs
  from it, unrolls them K steps with theta +/- eps, and the run continues from the + copy; so L+ - L- measures only
  this truncation's perturbation (earlier ones cannot leak into it, as they did when the two copies persisted
  separately and drifted apart). Only the current perturbation multiplies the difference, so the estimate ignores
  the effect of this truncation's updates on later ones: biased towards short horizons like TBPTT, at the cost of
  one truncation.
- ``full_horizon=True``: every estimate trains fresh tasks for the whole (constant) horizon. Unbiased for the
  Gaussian-smoothed full-horizon objective, at the cost of a full unroll per estimate.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from lopt import arguments
from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import antithetic
from lopt.meta_trainers import unroll as unroll_lib
from lopt.meta_trainers.estimator import GradientEstimator
from lopt.registry import register
from lopt.tasks.base import TaskFamily
from lopt.types import MetaParams, PRNGKey


STATE_FORMAT_CHANGED = (
    "the truncated-ES estimator state changed format in lopt 0.2: each antithetic pair now keeps one shared inner "
    "state (leading axis num_tasks * num_pairs) instead of a + and a - state (leading axes (2, num_tasks * "
    "num_pairs)), so this checkpoint, written by an earlier lopt, cannot be resumed with estimators.es. Start the "
    "run again in a new workdir, or warm-start it from this run's theta (lopt.load_trained(workdir).theta).")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["inner"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class ESState:
  """One inner state per pair slot, leading axis ``num_tasks * num_pairs``; unused with ``full_horizon``.

  A dataclass (not a NamedTuple) so that restoring a checkpoint of the old layout fails with
  ``STATE_FORMAT_CHANGED`` instead of a bare shape mismatch.
  """

  inner: unroll_lib.TaskState


def _state_dict(state: ESState) -> dict[str, Any]:
  return {"inner": serialization.to_state_dict(state.inner)}


def _from_state_dict(target: ESState, state: dict[str, Any]) -> ESState:
  inner = state.get("inner") if isinstance(state, dict) else None
  step = inner.get("step") if isinstance(inner, dict) else None
  if step is None or np.ndim(step) != np.ndim(target.inner.step):
    raise ValueError(STATE_FORMAT_CHANGED)
  return ESState(inner=serialization.from_state_dict(target.inner, inner, name="inner"))


serialization.register_serialization_state(ESState, _state_dict, _from_state_dict, override=True)


@register("estimator", "es")
def es(*, num_tasks: int = 8, num_pairs: int = 1, truncation_length: int = 10, horizon: int = 200,
       std: float = 0.01, full_horizon: bool = False, stagger: bool = True, meta_loss_split: str = "train",
       valid_every: int = 10,
       objective: str = "mean", schedule: str = "constant", min_horizon: int | None = None,
       max_loss: float = 1e3, loss_clip: float | None = 10.0, diff_clip: float | None = None) -> GradientEstimator:
  """Antithetic ES over one truncation (biased, cheap) or the full horizon (unbiased, one full unroll).

  Args:
    num_tasks: tasks trained in parallel.
    num_pairs: antithetic pairs per task (each pair costs two unrolls).
    truncation_length: inner steps per estimate (K); ignored with ``full_horizon``.
    horizon: inner steps per episode, rounded up to a multiple of K.
    std: standard deviation of the perturbations of theta.
    full_horizon: unroll fresh tasks over the whole horizon instead of one truncation.
    stagger: start the first episodes at different points (truncated mode).
    meta_loss_split: ``"train"`` or ``"outer_valid"``.
    valid_every: inner steps between outer-validation losses fed as ``valid_loss=`` to architectures that read
      it (``per_tensor``); 0: never.
    objective: ``"mean"`` or ``"final"``.
    schedule: ``"constant"``, ``"log_uniform"`` or ``"never_ending"`` (only ``"constant"`` with full_horizon).
    min_horizon: shortest episode of ``"log_uniform"``.
    max_loss: bound on the normalised objective beyond which a pair is masked and restarted.
    loss_clip: each step's normalised loss is clipped to this before reducing.
    diff_clip: optional bound on ``|L+ - L-|``.
  """
  num_pairs = arguments.integer("estimators.es.num_pairs", num_pairs, minimum=1)
  full_horizon = arguments.boolean("estimators.es.full_horizon", full_horizon)
  settings, perturbation = antithetic.settings(
      "estimators.es", std=std, loss_clip=loss_clip, diff_clip=diff_clip, num_tasks=num_tasks,
      truncation_length=truncation_length, horizon=horizon, schedule=schedule, min_horizon=min_horizon,
      stagger=stagger, objective=objective, meta_loss_split=meta_loss_split, max_loss=max_loss,
      valid_every=valid_every)
  if full_horizon and settings.schedule != "constant":
    raise arguments.ArgumentError("estimators.es.schedule", "full_horizon=True needs the 'constant' schedule, got "
                                  f"'{settings.schedule}'.")
  episodes = settings.episodes
  slots = settings.num_tasks * num_pairs

  def slots_of(theta, key, stagger, **kw) -> unroll_lib.TaskState:
    return antithetic.init_slots(theta, key, episodes, num_tasks=settings.num_tasks, copies=num_pairs,
                                 stagger=stagger, **kw)

  def init(theta: MetaParams, key: PRNGKey, *, task_family: TaskFamily,
           learned_optimizer: LearnedOptimizer) -> ESState:
    # With full_horizon the state only fixes shapes for checkpoints; every estimate starts fresh tasks.
    return ESState(inner=slots_of(theta, key, settings.stagger and not full_horizon, task_family=task_family,
                                  learned_optimizer=learned_optimizer))

  def estimate(theta: MetaParams, state: ESState, key: PRNGKey, *, task_family: TaskFamily,
               learned_optimizer: LearnedOptimizer) -> tuple[MetaParams, ESState, dict[str, Any]]:
    reset_key, noise_key, unroll_key = jax.random.split(key, 3)
    kw = dict(task_family=task_family, learned_optimizer=learned_optimizer)
    eps = antithetic.tree_normal(noise_key, theta, perturbation.std, slots)
    if full_horizon:
      inner = slots_of(theta, reset_key, False, **kw)
      step_settings = settings.full_horizon()
      done = jnp.ones((slots,), bool)
    else:
      inner, done = unroll_lib.reset_finished(theta, state.inner, reset_key, episodes, copies=num_pairs, **kw)
      step_settings = settings
    # Both signs start from the slot's one state, so L+ - L- owes nothing to earlier truncations' perturbations.
    grad, pairs, _, metrics = antithetic.truncation_step(step_settings, perturbation, theta,
                                                         antithetic.both_signs(inner), eps, eps, unroll_key,
                                                         copies=num_pairs, **kw)
    metrics["resets"] = jnp.sum(done)
    # The run continues from the + copy (masked slots restart from either: their step is set to the horizon).
    return grad, ESState(inner=jax.tree.map(lambda x: x[0], pairs)), metrics

  return GradientEstimator(name="es", num_tasks=settings.num_tasks, init=init, estimate=estimate,
                           settings=(settings, perturbation))
