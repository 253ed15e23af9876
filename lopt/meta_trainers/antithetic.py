"""Antithetic perturbations of theta over persistent truncated unrolls: the core shared by ``pes`` and ``es``.

A truncation unrolls two inner states of each slot K steps, one with theta + eps and one with theta - eps, from
the same data, and estimates ``direction * (L+ - L-) / (2 std^2)``: with ``direction = eps`` this
is truncated ES (biased towards the truncation, like TBPTT); with ``direction`` the sum of every perturbation
since the episode began it is PES (unbiased for the full horizon). PES keeps both copies across truncations; ES
starts both from one shared state each truncation (``both_signs``) and keeps the + copy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from lopt import arguments
from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import objectives
from lopt.meta_trainers import unroll as unroll_lib
from lopt.meta_trainers.truncation import Truncation, TruncationSchedule
from lopt.tasks.base import TaskFamily
from lopt.types import MetaParams, PRNGKey


@dataclasses.dataclass(frozen=True)
class Perturbation:
  """How theta is perturbed and how loss differences are bounded, validated once (``pes`` and ``es`` share it).

  Attributes:
    std: standard deviation of the Gaussian perturbations of theta.
    loss_clip: each step's normalised loss is clipped to this before reducing, so one diverging perturbation cannot
      dominate the estimate (None: no clipping).
    diff_clip: optional bound on ``|L+ - L-|``.
    owner: how errors name the parameters, e.g. ``"estimators.pes"``.
  """

  std: float = 0.01
  loss_clip: float | None = 10.0
  diff_clip: float | None = None
  owner: str = dataclasses.field(default="perturbation", compare=False, repr=False)

  def __post_init__(self):
    name = lambda param: f"{self.owner}.{param}"
    object.__setattr__(self, "std", arguments.real(name("std"), self.std, minimum=0.0, open_minimum=True))
    for field in ("loss_clip", "diff_clip"):
      value = arguments.optional_real(name(field), getattr(self, field), minimum=0.0, open_minimum=True)
      object.__setattr__(self, field, value)


def settings(owner: str, *, std: float, loss_clip: float | None, diff_clip: float | None,
             **truncation: Any) -> tuple[Truncation, Perturbation]:
  """The validated truncation and perturbation settings of an antithetic estimator named ``owner``."""
  return (Truncation(**truncation, owner=owner),
          Perturbation(std=std, loss_clip=loss_clip, diff_clip=diff_clip, owner=owner))


def tree_normal(key: PRNGKey, tree: MetaParams, std: float, batch: int) -> MetaParams:
  """Gaussian noise shaped like ``tree`` with a leading axis ``batch``."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, max(len(leaves), 1))
  noise = [std * jax.random.normal(k, (batch,) + jnp.shape(x), jnp.float32).astype(jnp.result_type(x))
           for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, noise)


def init_slots(theta: MetaParams, key: PRNGKey, schedule: TruncationSchedule, *, num_tasks: int, copies: int,
               stagger: bool, task_family: TaskFamily, learned_optimizer: LearnedOptimizer) -> unroll_lib.TaskState:
  """``num_tasks * copies`` slots with leading axis ``slots``; the copies of a task start identical."""
  task_key, horizon_key = jax.random.split(key)
  keys = jnp.repeat(jax.random.split(task_key, num_tasks), copies, axis=0)
  horizons = jnp.repeat(schedule.sample_first(horizon_key, (num_tasks,), stagger=stagger), copies, axis=0)
  return unroll_lib.init_tasks(theta, keys, horizons, task_family=task_family, learned_optimizer=learned_optimizer)


def both_signs(slots: unroll_lib.TaskState) -> unroll_lib.TaskState:
  """The + and - copies of each slot, leading axes ``(2, slots)``, both starting from the slot's state."""
  return jax.tree.map(lambda x: jnp.stack([x, x]), slots)


def init_pairs(theta: MetaParams, key: PRNGKey, schedule: TruncationSchedule, *, num_tasks: int, copies: int,
               stagger: bool, task_family: TaskFamily, learned_optimizer: LearnedOptimizer) -> unroll_lib.TaskState:
  """``num_tasks * copies`` slots with leading axes ``(2, slots)``; the copies of a task start identical."""
  return both_signs(init_slots(theta, key, schedule, num_tasks=num_tasks, copies=copies, stagger=stagger,
                               task_family=task_family, learned_optimizer=learned_optimizer))


def truncation_step(settings: Truncation, perturbation: Perturbation, theta: MetaParams,
                    inner: unroll_lib.TaskState, eps: MetaParams, direction: MetaParams, key: PRNGKey, *, copies: int,
                    task_family: TaskFamily, learned_optimizer: LearnedOptimizer
                    ) -> tuple[MetaParams, unroll_lib.TaskState, jax.Array, dict[str, Any]]:
  """Unrolls the pairs one truncation with theta +/- eps and forms the estimate along ``direction``.

  Args:
    settings: the truncation settings (length, objective, split, masking bound).
    perturbation: the perturbation scale and clipping of the loss differences.
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
      th, s, k, settings.truncation_length, task_family=task_family, learned_optimizer=learned_optimizer,
      meta_loss_split=settings.meta_loss_split, valid_every=settings.valid_every)
  task_keys = jnp.repeat(jax.random.split(key, num_slots // copies), copies, axis=0)
  # Both signs see the same keys, hence the same data: the antithetic pair differs only by the perturbation.
  inner, losses = jax.vmap(jax.vmap(run), in_axes=(0, 0, None))(thetas, inner, task_keys)

  raw = objectives.reduce(losses, settings.objective)  # (2, slots)
  clipped = objectives.reduce(losses, settings.objective, loss_clip=perturbation.loss_clip)
  valid = jnp.all(objectives.valid(raw, inner.params, settings.max_loss, lead=2), axis=0)
  diff = clipped[0] - clipped[1]
  if perturbation.diff_clip is not None:
    diff = jnp.clip(diff, -perturbation.diff_clip, perturbation.diff_clip)
  diff = jnp.where(valid, diff, 0.0)
  scale = diff / (2.0 * perturbation.std**2) / jnp.maximum(jnp.sum(valid), 1)
  grad = jax.tree.map(lambda a: jnp.tensordot(scale, a, axes=1).astype(a.dtype), direction)
  grad = objectives.finite_or_zero(grad)

  # Diverged slots restart at the next truncation.
  inner = inner._replace(step=jnp.where(valid[None], inner.step, inner.horizon))
  # The spread of L+ - L- over the valid slots: it grows when the pairs' states drift apart (see es.py).
  diff_mean = objectives.masked_mean(diff, valid)
  metrics = {"meta_loss": objectives.masked_mean(clipped.mean(axis=0), valid),
             "loss_diff_std": jnp.sqrt(objectives.masked_mean((diff - diff_mean)**2, valid)),
             "masked_tasks": num_slots - jnp.sum(valid),
             "mean_inner_step": jnp.mean(inner.step[0].astype(jnp.float32))}
  return grad, inner, valid, metrics
