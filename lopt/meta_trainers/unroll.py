"""Truncated inner training shared by every gradient estimator.

The state of one inner task is a ``TaskState``; estimators hold a batch of them (leading axes for tasks and, for
antithetic estimators, the sign of the perturbation) and step them with ``jax.vmap`` over these functions.

Episode lengths are multiples of the truncation length (``truncation.TruncationSchedule`` draws them), so a task
only reaches its horizon between truncations: resets happen at the start of a truncation, never inside one, which
keeps PES's accumulated perturbations exact.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt import arguments
from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers.truncation import TruncationSchedule
from lopt.tasks.base import SPLITS, Task, TaskFamily
from lopt.types import MetaParams, Params, PRNGKey, PyTree


class TaskState(NamedTuple):
  """One inner task mid-training.

  Attributes:
    cfg: the task's sampled configuration.
    params: inner parameters.
    opt_state: the learned optimizer's state for ``params``.
    step: inner steps done in the current episode.
    horizon: length of the current episode, the ``num_steps`` the optimizer is told.
  """

  cfg: PyTree
  params: Params
  opt_state: PyTree
  step: jax.Array
  horizon: jax.Array


def init_task_state(theta: MetaParams, key: PRNGKey, horizon: jax.Array, *, task_family: TaskFamily,
                    learned_optimizer: LearnedOptimizer) -> TaskState:
  """Samples a fresh task configuration and initial parameters; step 0 of an episode of ``horizon`` steps."""
  cfg_key, init_key = jax.random.split(key)
  cfg = task_family.sample(cfg_key)
  params = task_family.task(cfg).init(init_key)
  horizon = jnp.asarray(horizon, jnp.int32)
  opt_state = learned_optimizer.optimizer(theta, num_steps=horizon).init(params)
  return TaskState(cfg=cfg, params=params, opt_state=opt_state, step=jnp.zeros([], jnp.int32), horizon=horizon)


def init_tasks(theta: MetaParams, keys: PRNGKey, horizons: jax.Array, *, task_family: TaskFamily,
               learned_optimizer: LearnedOptimizer) -> TaskState:
  """``init_task_state`` for a batch: one task per key, leading axis ``len(keys)``."""
  return jax.vmap(lambda k, h: init_task_state(theta, k, h, task_family=task_family,
                                               learned_optimizer=learned_optimizer))(keys, horizons)


def reset_finished(theta: MetaParams, tasks: TaskState, key: PRNGKey, schedule: TruncationSchedule, *,
                   task_family: TaskFamily, learned_optimizer: LearnedOptimizer,
                   copies: int = 1) -> tuple[TaskState, jax.Array]:
  """Restarts every task that reached its horizon with a fresh configuration, parameters and horizon.

  Args:
    theta: meta-parameters (the optimizer state of a fresh task is initialised with them).
    tasks: a batch with leading axes ``(..., num_slots)``; every leading axis before the last is a copy of the
      same task (e.g. the sign of an antithetic pair), so copies stay identical when they restart.
    key: randomness of the fresh tasks.
    schedule: draws the fresh horizons.
    task_family: the family of the tasks.
    learned_optimizer: the architecture theta belongs to.
    copies: consecutive slots that are the same task (pairs of ES); they restart with the same configuration.

  Returns:
    The tasks and the boolean ``done`` mask of shape ``(num_slots,)``.
  """
  lead = tasks.step.ndim - 1
  step, horizon = tasks.step, tasks.horizon
  for _ in range(lead):
    step, horizon = step[0], horizon[0]
  done = step >= horizon
  num_slots = done.shape[0]
  task_key, horizon_key = jax.random.split(key)
  keys = jnp.repeat(jax.random.split(task_key, num_slots // copies), copies, axis=0)
  horizons = jnp.repeat(schedule.sample(horizon_key, (num_slots // copies,)), copies, axis=0)
  # Fresh tasks are built for every slot and selected where done. Building them only when some task finished
  # (under lax.cond) was measured at no gain: a batch of fresh tasks costs ~1% of a truncation's unroll.
  fresh = init_tasks(theta, keys, horizons, task_family=task_family, learned_optimizer=learned_optimizer)

  def select(a, b):
    a = jnp.broadcast_to(a, b.shape)
    return jnp.where(done.reshape((1,) * lead + done.shape + (1,) * (b.ndim - lead - 1)), a, b)

  return jax.tree.map(select, fresh, tasks), done


def reset_where(done: jax.Array, fresh: TaskState, state: TaskState) -> TaskState:
  """Selects ``fresh`` where ``done`` (a scalar bool for one task) and ``state`` elsewhere."""
  return jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, state)


def unroll(theta: MetaParams, state: TaskState, key: PRNGKey, num_steps: int, *, task_family: TaskFamily,
           learned_optimizer: LearnedOptimizer, meta_loss_split: str = "train", remat: bool = False,
           first_order: bool = False, valid_every: int = 0) -> tuple[TaskState, jax.Array]:
  """Trains one task for ``num_steps`` inner steps with ``lax.scan``.

  Args:
    theta: meta-parameters of the learned optimizer.
    state: the task's state; its episode must have at least ``num_steps`` steps left.
    key: randomness for batches and stochastic losses; the same key gives the same data.
    num_steps: truncation length (static).
    task_family: the family ``state.cfg`` was sampled from.
    learned_optimizer: the architecture theta belongs to.
    meta_loss_split: ``"train"`` scores each step by the training batch loss already computed for the gradient;
      ``"outer_valid"`` by the loss on a fresh outer-validation batch.
    remat: rematerialise each inner step in the backward pass (``jax.checkpoint``), so differentiating through
      the unroll stores only the carry of each step instead of every intermediate.
    first_order: when the unroll is differentiated, treat each inner gradient as a constant: the meta-gradient
      keeps every path through the optimizer's updates and the losses but drops the second-order terms through
      the task's Hessian (like first-order MAML). No effect on the forward pass.
    valid_every: for an architecture that ``reads_valid_loss``, the loss on an outer-validation batch is computed
      at the first step of the truncation and every ``valid_every`` steps after it, and each step's ``update`` gets
      the latest one as ``valid_loss=`` (Metz et al. 2020). 0, or an architecture that does not read it: not fed.

  Returns:
    The new state and the normalised meta-loss of each step, shape ``(num_steps,)``.
  """
  if meta_loss_split not in SPLITS:
    raise ValueError(f"meta_loss_split must be one of {SPLITS}, got '{meta_loss_split}'.")
  task = task_family.task(state.cfg)
  tx = learned_optimizer.optimizer(theta, num_steps=state.horizon)
  feed_valid = feeds_valid_loss(learned_optimizer, valid_every)
  if feed_valid:
    check_validation_split(task, task_family)

  def step_fn(carry, xs):
    params, opt_state, valid_loss = carry
    step_key, index = xs
    batch_key, loss_key, valid_key = jax.random.split(step_key, 3)
    loss, grads = jax.value_and_grad(task.loss)(params, loss_key, task.batch(batch_key, "train"))
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    if meta_loss_split == "train":
      meta_loss = loss
    else:
      meta_loss = task.loss(params, loss_key, task.batch(valid_key, meta_loss_split))
    # A padded task's mask travels beside the parameters (see lopt.architectures.masked_stats).
    extra = {} if task.mask is None else {"mask": task.mask}
    if feed_valid:
      valid_loss = latest_valid_loss(task, params, valid_key, index, valid_every, valid_loss)
      extra["valid_loss"] = valid_loss
    updates, opt_state = tx.update(grads, opt_state, params, loss=loss, **extra)
    params = optax.apply_updates(params, updates)
    return (params, opt_state, valid_loss), task.normalize(meta_loss)

  if remat:
    step_fn = jax.checkpoint(step_fn)
  carry = (state.params, state.opt_state, jnp.zeros([], jnp.float32))
  (params, opt_state, _), losses = jax.lax.scan(step_fn, carry, (jax.random.split(key, num_steps),
                                                                 jnp.arange(num_steps)))
  new_state = state._replace(params=params, opt_state=opt_state, step=state.step + num_steps)
  return new_state, losses


def feeds_valid_loss(learned_optimizer: LearnedOptimizer, valid_every: int) -> bool:
  """Whether an inner loop computes and passes ``valid_loss=``: asked for, and read by the architecture."""
  return arguments.integer("valid_every", valid_every, minimum=0) > 0 and learned_optimizer.reads_valid_loss


def check_validation_split(task: Task, task_family: TaskFamily) -> None:
  """Fails with the family's name when its tasks cannot draw an outer-validation batch."""
  try:
    jax.eval_shape(lambda key: task.batch(key, "outer_valid"), jax.random.key(0))
  except (ValueError, KeyError) as e:
    raise ValueError(f"Task family '{task_family.name}' has no 'outer_valid' split, which feeding valid_loss to "
                     f"the learned optimizer needs ({e}); set valid_every = 0 for it.") from e


def latest_valid_loss(task: Task, params: Params, key: PRNGKey, index: jax.Array, valid_every: int,
                      previous: jax.Array) -> jax.Array:
  """The outer-validation loss at steps ``0, valid_every, 2 * valid_every, ...`` of a scan, else ``previous``.

  ``index`` is the scan's own step counter, the same for every task of a ``vmap``, so ``lax.cond`` stays a real
  branch (it would become a select, computing the loss every step, if the condition differed between tasks).
  """
  def fresh():
    return task.loss(params, key, task.batch(jax.random.fold_in(key, 1), "outer_valid")).astype(jnp.float32)

  return jax.lax.cond(index % valid_every == 0, fresh, lambda: previous)
