"""``pes``: antithetic Persistent Evolution Strategies (Vicol et al. 2021, arXiv 2112.13835).

Each task keeps two inner states, one trained with theta + eps and one with theta - eps, and an accumulator xi of
all perturbations applied since its episode began. Every truncation draws fresh eps, adds it to xi, unrolls both
states K steps, and estimates ``xi * (L+ - L-) / (2 std^2)``. Because xi carries the perturbations of earlier
truncations, the estimate is unbiased for the full-horizon (Gaussian-smoothed) objective at the cost of one
truncation. When a task reaches its horizon both states restart from a fresh task and xi is reset to zero.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import unroll as unroll_lib
from lopt.meta_trainers.base import GradientEstimator, tree_finite
from lopt.registry import register
from lopt.tasks.base import TaskFamily
from lopt.types import MetaParams, PRNGKey


class PESState(NamedTuple):
  """Inner states with leading axes ``(2, num_tasks)`` (sign, task) and accumulators with ``(num_tasks,)``."""

  inner: unroll_lib.TaskState
  accumulator: MetaParams


def _tree_normal(key: PRNGKey, tree: MetaParams, std: float, batch: int) -> MetaParams:
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, max(len(leaves), 1))
  noise = [std * jax.random.normal(k, (batch,) + jnp.shape(x), jnp.float32).astype(jnp.result_type(x))
           for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, noise)


def _expand(mask: jax.Array, x: jax.Array) -> jax.Array:
  return mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))


@dataclasses.dataclass(frozen=True)
class PES(GradientEstimator):
  """Antithetic PES over truncated unrolls.

  Attributes:
    num_tasks_: tasks trained in parallel (each with a + and a - copy).
    truncation_length: inner steps per estimate (K).
    horizon: inner steps per episode (T), rounded up to a multiple of K.
    std: standard deviation of the perturbations of theta.
    stagger: start the first episodes at different points so that tasks do not all reset together.
    meta_loss_split: data split scoring each inner step (``"train"`` or ``"outer_valid"``).
    max_loss: a task whose normalised loss exceeds this (or is not finite) is masked out and restarted.
    loss_clip: each step's normalised loss is clipped to this before averaging, so one diverging perturbation
      cannot dominate the estimate.
  """

  num_tasks_: int = 8
  truncation_length: int = 10
  horizon: int = 200
  std: float = 0.01
  stagger: bool = True
  meta_loss_split: str = "train"
  max_loss: float = 1e3
  loss_clip: float = 10.0

  def __post_init__(self):
    if self.num_tasks_ < 1 or self.std <= 0:
      raise ValueError(f"pes needs num_tasks >= 1 and std > 0, got {self.num_tasks_} and {self.std}.")
    object.__setattr__(self, "horizon", unroll_lib.round_horizon(self.horizon, self.truncation_length))

  @property
  def num_tasks(self) -> int:
    return self.num_tasks_

  def _fresh(self, theta, keys, horizons, task_family, learned_optimizer) -> unroll_lib.TaskState:
    """Fresh tasks for every key, duplicated along a leading sign axis (both signs start identical)."""
    fresh = jax.vmap(lambda k, h: unroll_lib.init_task_state(
        theta, k, h, task_family=task_family, learned_optimizer=learned_optimizer))(keys, horizons)
    return jax.tree.map(lambda x: jnp.stack([x, x]), fresh)

  def init(self, theta: MetaParams, key: PRNGKey, *, task_family: TaskFamily,
           learned_optimizer: LearnedOptimizer) -> PESState:
    task_key, stagger_key = jax.random.split(key)
    num_truncations = self.horizon // self.truncation_length
    if self.stagger:
      # A shortened first episode staggers the resets without spending compute on burn-in.
      horizons = self.truncation_length * jax.random.randint(
          stagger_key, (self.num_tasks,), 1, num_truncations + 1)
    else:
      horizons = jnp.full((self.num_tasks,), self.horizon)
    inner = self._fresh(theta, jax.random.split(task_key, self.num_tasks), horizons, task_family,
                        learned_optimizer)
    accumulator = jax.tree.map(lambda x: jnp.zeros((self.num_tasks,) + jnp.shape(x), jnp.result_type(x)), theta)
    return PESState(inner=inner, accumulator=accumulator)

  def estimate(self, theta: MetaParams, state: PESState, key: PRNGKey, *, task_family: TaskFamily,
               learned_optimizer: LearnedOptimizer) -> tuple[MetaParams, PESState, dict[str, Any]]:
    reset_key, noise_key, unroll_key = jax.random.split(key, 3)
    inner, accumulator = state

    done = inner.step[0] >= inner.horizon[0]
    fresh = self._fresh(theta, jax.random.split(reset_key, self.num_tasks),
                        jnp.full((self.num_tasks,), self.horizon), task_family, learned_optimizer)
    inner = jax.tree.map(lambda a, b: jnp.where(_expand(done, a[0])[None], a, b), fresh, inner)
    accumulator = jax.tree.map(lambda a: jnp.where(_expand(done, a), 0.0, a).astype(a.dtype), accumulator)

    eps = _tree_normal(noise_key, theta, self.std, self.num_tasks)
    accumulator = jax.tree.map(jnp.add, accumulator, eps)
    thetas = jax.tree.map(lambda t, e: jnp.stack([t[None] + e, t[None] - e]), theta, eps)

    run = lambda th, s, k: unroll_lib.unroll(
        th, s, k, self.truncation_length, task_family=task_family, learned_optimizer=learned_optimizer,
        meta_loss_split=self.meta_loss_split)
    task_keys = jax.random.split(unroll_key, self.num_tasks)
    # Both signs see the same keys, hence the same data: the antithetic pair differs only by the perturbation.
    inner, losses = jax.vmap(jax.vmap(run), in_axes=(0, 0, None))(thetas, inner, task_keys)

    raw_loss = jnp.mean(losses, axis=-1)  # (2, num_tasks)
    segment_loss = jnp.mean(jnp.minimum(losses, self.loss_clip), axis=-1)
    params_ok = jax.vmap(jax.vmap(tree_finite))(inner.params)
    valid = jnp.all(jnp.isfinite(raw_loss) & (raw_loss < self.max_loss) & params_ok, axis=0)
    diff = jnp.where(valid, segment_loss[0] - segment_loss[1], 0.0)
    num_valid = jnp.sum(valid)
    scale = diff / (2.0 * self.std**2) / jnp.maximum(num_valid, 1)
    grad = jax.tree.map(lambda a: jnp.tensordot(scale, a, axes=1).astype(a.dtype), accumulator)

    # Diverged tasks restart at the next truncation; their accumulators are reset with them.
    inner = inner._replace(step=jnp.where(valid[None], inner.step, inner.horizon))
    mean_loss = jnp.sum(jnp.where(valid, segment_loss.mean(axis=0), 0.0)) / jnp.maximum(num_valid, 1)
    metrics = {"meta_loss": mean_loss, "masked_tasks": self.num_tasks - num_valid,
               "resets": jnp.sum(done), "mean_inner_step": jnp.mean(inner.step[0].astype(jnp.float32))}
    return grad, PESState(inner=inner, accumulator=accumulator), metrics


@register("estimator", "pes")
def pes(*, num_tasks: int = 8, truncation_length: int = 10, horizon: int = 200, std: float = 0.01,
        stagger: bool = True, meta_loss_split: str = "train", max_loss: float = 1e3,
        loss_clip: float = 10.0) -> PES:
  """Antithetic Persistent Evolution Strategies over truncated unrolls (unbiased for the full horizon)."""
  return PES(num_tasks_=num_tasks, truncation_length=truncation_length, horizon=horizon, std=std,
             stagger=stagger, meta_loss_split=meta_loss_split, max_loss=max_loss, loss_clip=loss_clip)
