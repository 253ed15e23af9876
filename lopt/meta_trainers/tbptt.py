"""``tbptt``: truncated backpropagation through time.

Each estimate differentiates the meta-objective of one K-step truncation through the inner updates, treating the
incoming inner state as a constant. Cheap and low-variance, but biased towards short-horizon (greedy) behaviour:
it never sees how this truncation's updates affect later ones. ``remat`` (the default) recomputes each inner step
in the backward pass, so memory does not grow with K's intermediates; on CPU it is also faster than saving them
(docs/benchmarks.md: the scan's stacked per-step buffers of ff's update cost more to write and read than to
recompute). ``first_order`` drops the second-order terms (the inner gradients are
treated as constants), which makes each estimate cheaper on neural tasks at the price of a further bias.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lopt import arguments
from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import objectives
from lopt.meta_trainers import unroll as unroll_lib
from lopt.meta_trainers.estimator import GradientEstimator
from lopt.meta_trainers.truncation import Truncation
from lopt.registry import register
from lopt.tasks.base import TaskFamily
from lopt.types import MetaParams, PRNGKey


@register("estimator", "tbptt")
def tbptt(*, num_tasks: int = 8, truncation_length: int = 10, horizon: int = 200, stagger: bool = True,
          meta_loss_split: str = "train", valid_every: int = 10, objective: str = "mean", schedule: str = "constant",
          min_horizon: int | None = None, max_loss: float = 1e3, remat: bool = True,
          first_order: bool = False) -> GradientEstimator:
  """Truncated backprop through time over K-step truncations (biased to short horizons; remat saves memory).

  Args:
    num_tasks: tasks trained in parallel.
    truncation_length: inner steps differentiated per estimate (K).
    horizon: inner steps per episode, rounded up to a multiple of K.
    stagger: start the first episodes at different points.
    meta_loss_split: ``"train"`` or ``"outer_valid"``.
    valid_every: inner steps between outer-validation losses fed as ``valid_loss=`` to architectures that read
      it (``per_tensor``); 0: never.
    objective: ``"mean"`` or ``"final"``.
    schedule: ``"constant"``, ``"log_uniform"`` or ``"never_ending"``.
    min_horizon: shortest episode of ``"log_uniform"``.
    max_loss: bound on the normalised objective beyond which a task is masked and restarted.
    remat: rematerialise inner steps in the backward pass (less memory; about one more forward pass of compute,
      but faster than saving every intermediate on CPU). False saves them (the behaviour before 0.2.0).
    first_order: do not differentiate through the inner gradients (no Hessian terms; cheaper, biased).
  """
  settings = Truncation(num_tasks=num_tasks, truncation_length=truncation_length, horizon=horizon,
                        schedule=schedule, min_horizon=min_horizon, stagger=stagger, objective=objective,
                        meta_loss_split=meta_loss_split, max_loss=max_loss, valid_every=valid_every,
                        owner="estimators.tbptt")
  remat = arguments.boolean("estimators.tbptt.remat", remat)
  first_order = arguments.boolean("estimators.tbptt.first_order", first_order)
  episodes = settings.episodes
  n = settings.num_tasks

  def init(theta: MetaParams, key: PRNGKey, *, task_family: TaskFamily,
           learned_optimizer: LearnedOptimizer) -> unroll_lib.TaskState:
    task_key, horizon_key = jax.random.split(key)
    horizons = episodes.sample_first(horizon_key, (n,), stagger=settings.stagger)
    return unroll_lib.init_tasks(theta, jax.random.split(task_key, n), horizons, task_family=task_family,
                                 learned_optimizer=learned_optimizer)

  def estimate(theta: MetaParams, state: unroll_lib.TaskState, key: PRNGKey, *, task_family: TaskFamily,
               learned_optimizer: LearnedOptimizer) -> tuple[MetaParams, unroll_lib.TaskState, dict[str, Any]]:
    reset_key, unroll_key = jax.random.split(key)
    kw = dict(task_family=task_family, learned_optimizer=learned_optimizer)
    tasks, done = unroll_lib.reset_finished(theta, state, reset_key, episodes, **kw)
    # The incoming state is a constant: the gradient stops at the truncation boundary.
    tasks = jax.lax.stop_gradient(tasks)

    def task_objective(th, task_state, task_key):
      new_state, losses = unroll_lib.unroll(th, task_state, task_key, settings.truncation_length,
                                            meta_loss_split=settings.meta_loss_split, remat=remat,
                                            valid_every=settings.valid_every,
                                            first_order=first_order, **kw)
      return objectives.reduce(losses, settings.objective), new_state

    # Per-task gradients, so a diverged task's NaNs can be dropped by selection rather than poison the sum.
    (values, tasks), grads = jax.vmap(jax.value_and_grad(task_objective, has_aux=True), in_axes=(None, 0, 0))(
        theta, tasks, jax.random.split(unroll_key, n))
    valid = objectives.valid(values, tasks.params, settings.max_loss, lead=1) & jax.vmap(objectives.tree_finite)(grads)
    num_valid = jnp.maximum(jnp.sum(valid), 1)
    grad = jax.tree.map(
        lambda g: jnp.sum(jnp.where(valid.reshape((-1,) + (1,) * (g.ndim - 1)), g, 0.0), axis=0) / num_valid,
        grads)
    grad = objectives.finite_or_zero(grad)
    tasks = tasks._replace(step=jnp.where(valid, tasks.step, tasks.horizon))
    metrics = {"meta_loss": objectives.masked_mean(values, valid), "masked_tasks": n - jnp.sum(valid),
               "resets": jnp.sum(done), "mean_inner_step": jnp.mean(tasks.step.astype(jnp.float32))}
    return grad, tasks, metrics

  return GradientEstimator(name="tbptt", num_tasks=n, init=init, estimate=estimate, settings=settings)
