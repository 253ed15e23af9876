"""``meta_train``: the outer loop that learns theta.

It owns the outer optax optimizer, one jitted meta-step per task family, metric writing (console, JSONL, wandb),
progress with steps/s and ETA, checkpoints every N steps and at the end, and automatic resume: when ``workdir``
holds a checkpoint, training continues from it. The task batch is split over the devices of a ``tasks`` mesh
axis (``sharding``); theta and the outer optimizer state are replicated. The RNG of step ``i`` is ``fold_in(base_key, i)``, so a resumed
run draws exactly the keys the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from lopt import checkpoints, progress, writers
from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import sharding
from lopt.meta_trainers.base import GradientEstimator, tree_finite
from lopt.tasks.base import TaskFamily, TaskSampler
from lopt.types import MetaParams, PyTree


@dataclasses.dataclass
class MetaTrainResult:
  """What ``meta_train`` returns: final meta-parameters, the step reached and the last logged metrics."""

  theta: MetaParams
  step: int
  metrics: dict[str, float]
  evaluation: Any = None
  interrupted: bool = False


def default_meta_optimizer(learning_rate: float = 1e-3, clip_norm: float = 1.0) -> optax.GradientTransformation:
  """Adam on theta after clipping the meta-gradient's global norm."""
  return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(learning_rate))


def make_meta_step(estimator: GradientEstimator, family: TaskFamily, architecture: LearnedOptimizer,
                   meta_optimizer: optax.GradientTransformation, placement: sharding.Placement,
                   estimator_shardings: PyTree) -> Callable:
  """One jitted meta-step for ``family``: estimate, then update theta unless the estimate is not finite.

  The step is ``(theta, opt_state, est_state, key_data) -> (theta, opt_state, est_state, metrics)``; the
  estimator state lives in ``estimator_shardings`` (split over the ``tasks`` mesh axis), everything else is
  replicated, so GSPMD turns the mean over tasks into a mean over devices. ``key_data`` is
  ``jax.random.key_data`` of the step's key (plain uint32, the same in every process).
  """

  def step(theta, opt_state, est_state, key_data):
    key = jax.random.wrap_key_data(key_data)
    grad, est_state, metrics = estimator.estimate(theta, est_state, key, task_family=family,
                                                  learned_optimizer=architecture)
    finite = tree_finite(grad)
    grad = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grad)
    updates, new_opt_state = meta_optimizer.update(grad, opt_state, theta)
    new_theta = optax.apply_updates(theta, updates)
    # A non-finite meta-gradient must not reach theta or the outer optimizer's moments.
    theta, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), (new_theta, new_opt_state),
                                    (theta, opt_state))
    metrics = dict(metrics, grad_norm=optax.tree.norm(grad), skipped_update=1 - finite.astype(jnp.int32))
    return theta, opt_state, est_state, metrics

  rep = placement.replicated
  return jax.jit(step, in_shardings=(rep, rep, estimator_shardings, rep),
                 out_shardings=(rep, rep, estimator_shardings, rep), donate_argnums=(2,))


@contextlib.contextmanager
def _stop_requests(enabled: bool):
  """Turns SIGTERM and SIGINT into a request to stop after the current step (yields a set that fills on one)."""
  requested: set[int] = set()
  if not enabled or threading.current_thread() is not threading.main_thread():
    yield requested
    return
  previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

  def handler(signum, frame):
    del frame
    logging.warning("Received %s: stopping after the current step and writing a checkpoint.",
                    signal.Signals(signum).name)
    requested.add(signum)

  for sig in previous:
    signal.signal(sig, handler)
  try:
    yield requested
  finally:
    for sig, old in previous.items():
      signal.signal(sig, old)


def meta_train(*, task_sampler: TaskSampler, architecture: LearnedOptimizer, estimator: GradientEstimator,
               num_outer_steps: int, workdir: str, seed: int = 0,
               meta_optimizer: optax.GradientTransformation | None = None, log_every: int = 10,
               checkpoint_every: int = 100, keep_checkpoints: int = 3, wandb_mode: str = "offline",
               config_text: str | None = None, final_evaluation: Callable[..., Any] | None = None,
               meta_eval: Callable[..., Mapping[str, float]] | None = None, meta_eval_every: int = 0,
               handle_signals: bool = True, num_devices: int | None = None) -> MetaTrainResult:
  """Meta-trains ``architecture`` on tasks from ``task_sampler`` with ``estimator``.

  Args:
    task_sampler: chooses the task family of each outer step.
    architecture: the learned optimizer whose theta is trained.
    estimator: the meta-gradient estimator (e.g. ``pes``).
    num_outer_steps: total outer steps; a resumed run counts the steps already done.
    workdir: directory for checkpoints, ``metrics.jsonl`` and wandb files; resumed from when it holds a checkpoint.
    seed: seeds theta's initialisation and every random draw of the run.
    meta_optimizer: outer optax optimizer; default ``default_meta_optimizer()``.
    log_every: outer steps between metric writes (metrics are averaged over them).
    checkpoint_every: outer steps between checkpoints (one is always written at the end).
    keep_checkpoints: how many recent checkpoints to keep.
    wandb_mode: ``"offline"`` (default, no network), ``"online"`` or ``"disabled"``.
    config_text: the gin config of the run, recorded as the wandb run config.
    final_evaluation: optional ``fn(theta=..., init_theta=..., architecture=..., task_sampler=..., workdir=...)``
      called at the end (e.g. ``lopt.evaluation.heldout_comparison``); its result is returned (process 0 only).
    meta_eval: optional ``fn(theta=..., step=..., architecture=..., task_sampler=...) -> {name: float}`` run every
      ``meta_eval_every`` outer steps (and at the last step) on held-out tasks; its scalars are written with a
      ``meta_eval/`` prefix through the same writers as the training metrics (process 0 only).
    meta_eval_every: outer steps between ``meta_eval`` calls; 0 disables it.
    handle_signals: on SIGTERM/SIGINT, finish the current step, write a checkpoint and return with
      ``interrupted=True`` (only when called from the main thread). With several processes, a signal to any of
      them stops all of them after the same step.
    num_devices: devices to split the task batch over (a ``tasks`` mesh axis; theta is replicated). None: the
      largest count that divides the task batch and fits the devices present (logged). An explicit count that
      does not divide the task batch or exceeds the devices present is an error. With several processes
      (``jax.distributed``) only process 0 writes metrics and checkpoints.

  Returns:
    A ``MetaTrainResult``.
  """
  if num_outer_steps < 0 or log_every < 1 or checkpoint_every < 1 or meta_eval_every < 0:
    raise ValueError("num_outer_steps, meta_eval_every must be >= 0 and log_every, checkpoint_every >= 1; got "
                     f"{num_outer_steps}, {meta_eval_every}, {log_every}, {checkpoint_every}.")
  if meta_eval_every and meta_eval is None:
    raise ValueError(f"meta_eval_every={meta_eval_every} needs a meta_eval function (e.g. "
                     "@periodic_meta_eval()).")
  checkpoints.ensure_writable_dir(workdir)
  main_process = sharding.is_main_process()
  meta_optimizer = meta_optimizer or default_meta_optimizer()
  base_key = jax.random.key(seed)
  theta_key, est_key, loop_key = jax.random.split(base_key, 3)

  # Every process computes the same initial state from the seed (or restores the same checkpoint) on the host,
  # then places only its own devices' shards.
  init_theta = sharding.to_host(architecture.init(theta_key))
  families = {f.name: f for f in task_sampler.families}
  est_states = {name: estimator.init(init_theta, jax.random.fold_in(est_key, i), task_family=f,
                                     learned_optimizer=architecture)
                for i, (name, f) in enumerate(sorted(families.items()))}
  state: dict[str, PyTree] = {"theta": init_theta, "outer_opt_state": meta_optimizer.init(init_theta),
                              "estimator": est_states, "step": np.int64(0)}
  state = sharding.to_host(state)
  ckpt_dir = f"{workdir}/checkpoints"
  if checkpoints.latest_step(ckpt_dir) is not None:
    state, _ = checkpoints.restore(ckpt_dir, state)
    logging.info("Resuming from step %d in %s", int(state["step"]), ckpt_dir)
    if main_process:
      dropped = writers.truncate_jsonl(f"{workdir}/{writers.METRICS_FILE}", int(state["step"]))
      if dropped:
        logging.info("Dropped %d metric records logged after the checkpoint; they are computed again.", dropped)
  start_step = int(state["step"])

  task_axes = {name: estimator.task_axes(s) for name, s in state["estimator"].items()}
  sizes = sharding.task_batch_sizes(state["estimator"], task_axes)
  num_devices = sharding.resolve_num_devices(num_devices, sizes, num_tasks=estimator.num_tasks)
  placement = sharding.Placement(sharding.task_mesh(num_devices))
  logging.info(sharding.describe(placement, estimator.num_tasks))
  est_shardings = {name: placement.task_sharded(state["estimator"][name], task_axes[name]) for name in families}
  theta = placement.place(state["theta"], placement.replicated)
  opt_state = placement.place(state["outer_opt_state"], placement.replicated)
  est_states = {name: placement.place(state["estimator"][name], est_shardings[name]) for name in families}

  if main_process:
    writer = writers.create_default_writers(workdir, wandb_mode=wandb_mode, config_text=config_text)
  else:
    writer = writers.NullWriter()
  steps = {name: make_meta_step(estimator, f, architecture, meta_optimizer, placement, est_shardings[name])
           for name, f in families.items()}
  logging.info("Meta-training %s (%d meta-parameters) with %s for %d outer steps from step %d.",
               architecture.name, architecture.num_meta_parameters(), type(estimator).__name__, num_outer_steps,
               start_step)

  pending: list[Mapping[str, jax.Array]] = []
  last_metrics: dict[str, float] = {}
  tracker = progress.Progress(num_outer_steps - start_step, unit="steps")
  done = start_step

  def save(step: int) -> None:
    # Gathering is a collective: every process takes part, process 0 alone writes.
    host_state = sharding.to_host({"theta": theta, "outer_opt_state": opt_state, "estimator": est_states,
                                   "step": np.int64(step)})
    if main_process:
      path = checkpoints.save(ckpt_dir, step, host_state, keep=keep_checkpoints)
      logging.info("Wrote checkpoint %s", path)

  try:
    with _stop_requests(handle_signals) as stop_requested:
      for step in range(start_step, num_outer_steps):
        key = jax.random.fold_in(loop_key, step)
        family = task_sampler.sample(jax.random.fold_in(key, 0))
        key_data = np.asarray(jax.random.key_data(jax.random.fold_in(key, 1)))
        theta, opt_state, est_states[family.name], metrics = steps[family.name](
            theta, opt_state, est_states[family.name], key_data)
        pending.append(metrics)
        done = step + 1
        tracker.advance()
        # With several processes, a signal to any of them stops all of them after the same step.
        stop = sharding.any_process(bool(stop_requested))
        if done % log_every == 0 or done == num_outer_steps or stop:
          last_metrics = {k: float(np.mean([float(m[k]) for m in pending])) for k in pending[0]}
          last_metrics.update(steps_per_sec=tracker.rate(), eta_sec=tracker.eta())
          writer.write_scalars(done, last_metrics)
          pending = []
        # Evaluations are local computations; only process 0 writes their results, so only it runs them.
        if (meta_eval is not None and meta_eval_every and main_process
            and (done % meta_eval_every == 0 or done == num_outer_steps)):
          scores = meta_eval(theta=sharding.to_host(theta), step=done, architecture=architecture,
                             task_sampler=task_sampler)
          writer.write_scalars(done, {f"meta_eval/{k}": float(v) for k, v in scores.items()})
        if stop:
          save(done)
          logging.warning("Stopped at step %d; a checkpoint is written and the run resumes from it.", done)
          return MetaTrainResult(theta=sharding.to_host(theta), step=done, metrics=last_metrics, interrupted=True)
        if done % checkpoint_every == 0 and done != num_outer_steps:
          save(done)
    save(done)
    theta = sharding.to_host(theta)
    evaluation = None
    if final_evaluation is not None and main_process:
      evaluation = final_evaluation(theta=theta, init_theta=init_theta, architecture=architecture,
                                    task_sampler=task_sampler, workdir=workdir)
    return MetaTrainResult(theta=theta, step=done, metrics=last_metrics, evaluation=evaluation)
  finally:
    writer.close()
