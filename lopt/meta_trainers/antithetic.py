"""Antithetic perturbations of theta over persistent truncated unrolls: the core shared by ``pes`` and ``es``.

Each slot keeps two inner states, one trained with theta + eps and one with theta - eps, from the same data. A
truncation unrolls both K steps and estimates ``direction * (L+ - L-) / (2 std^2)``: with ``direction = eps`` this
is truncated ES (biased towards the truncation, like TBPTT); with ``direction`` the sum of every perturbation
since the episode began it is PES (unbiased for the full horizon).
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp

from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import objectives
from lopt.meta_trainers import unroll as unroll_lib
from lopt.meta_trainers.truncation import TruncationSchedule
from lopt.tasks.base import TaskFamily
from lopt.types import MetaParams, PRNGKey


class AntitheticConfig(Protocol):
  """The hyperparameters ``truncation_step`` reads (``PES`` and ``ES`` have them)."""

  truncation_length: int
  std: float
  objective: str
  meta_loss_split: str
  max_loss: float
  loss_clip: float | None
  diff_clip: float | None


def tree_normal(key: PRNGKey, tree: MetaParams, std: float, batch: int) -> MetaParams:
  """Gaussian noise shaped like ``tree`` with a leading axis ``batch``."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, max(len(leaves), 1))
  noise = [std * jax.random.normal(k, (batch,) + jnp.shape(x), jnp.float32).astype(jnp.result_type(x))
           for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, noise)


def init_pairs(theta: MetaParams, key: PRNGKey, schedule: TruncationSchedule, *, num_tasks: int, copies: int,
               stagger: bool, task_family: TaskFamily, learned_optimizer: LearnedOptimizer) -> unroll_lib.TaskState:
  """``num_tasks * copies`` slots with leading axes ``(2, slots)``; the copies of a task start identical."""
  task_key, horizon_key = jax.random.split(key)
  keys = jnp.repeat(jax.random.split(task_key, num_tasks), copies, axis=0)
  horizons = jnp.repeat(schedule.sample_first(horizon_key, (num_tasks,), stagger=stagger), copies, axis=0)
  fresh = unroll_lib.init_tasks(theta, keys, horizons, task_family=task_family,
                                learned_optimizer=learned_optimizer)
  return jax.tree.map(lambda x: jnp.stack([x, x]), fresh)


def truncation_step(config: AntitheticConfig, theta: MetaParams, inner: unroll_lib.TaskState, eps: MetaParams,
                    direction: MetaParams, key: PRNGKey, *, copies: int, task_family: TaskFamily,
                    learned_optimizer: LearnedOptimizer) -> tuple[MetaParams, unroll_lib.TaskState, jax.Array,
                                                                  dict[str, Any]]:
  """Unrolls the pairs one truncation with theta +/- eps and forms the estimate along ``direction``.

  Args:
    config: the estimator's hyperparameters.
    theta: meta-parameters.
    inner: states with leading axes ``(2, slots)``.
    eps: this truncation's perturbations, leading axis ``slots``.
    direction: what the loss difference multiplies (``eps`` for ES, the accumulator for PES).
    key: data for the truncation; the copies of a task and both signs see the same data.
    copies: consecutive slots that are the same task.
    task_family: the tasks' family.
    learned_optimizer: the architecture theta belongs to.

  Returns:
    ``(grad, inner, valid, metrics)``; masked slots have their step set to their horizon so they restart.
  """
  num_slots = inner.step.shape[1]
  thetas = jax.tree.map(lambda t, e: jnp.stack([t[None] + e, t[None] - e]), theta, eps)
  run = lambda th, s, k: unroll_lib.unroll(
      th, s, k, config.truncation_length, task_family=task_family, learned_optimizer=learned_optimizer,
      meta_loss_split=config.meta_loss_split)
  task_keys = jnp.repeat(jax.random.split(key, num_slots // copies), copies, axis=0)
  # Both signs see the same keys, hence the same data: the antithetic pair differs only by the perturbation.
  inner, losses = jax.vmap(jax.vmap(run), in_axes=(0, 0, None))(thetas, inner, task_keys)

  raw = objectives.reduce(losses, config.objective)  # (2, slots)
  clipped = objectives.reduce(losses, config.objective, loss_clip=config.loss_clip)
  valid = jnp.all(objectives.valid(raw, inner.params, config.max_loss, lead=2), axis=0)
  diff = clipped[0] - clipped[1]
  if config.diff_clip is not None:
    diff = jnp.clip(diff, -config.diff_clip, config.diff_clip)
  diff = jnp.where(valid, diff, 0.0)
  scale = diff / (2.0 * config.std**2) / jnp.maximum(jnp.sum(valid), 1)
  grad = jax.tree.map(lambda a: jnp.tensordot(scale, a, axes=1).astype(a.dtype), direction)
  grad = objectives.finite_or_zero(grad)

  # Diverged slots restart at the next truncation.
  inner = inner._replace(step=jnp.where(valid[None], inner.step, inner.horizon))
  metrics = {"meta_loss": objectives.masked_mean(clipped.mean(axis=0), valid),
             "masked_tasks": num_slots - jnp.sum(valid),
             "mean_inner_step": jnp.mean(inner.step[0].astype(jnp.float32))}
  return grad, inner, valid, metrics
