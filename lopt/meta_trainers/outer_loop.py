"""``meta_train``: the outer loop that learns theta.

It owns the outer optax optimizer, one jitted meta-step per task family, metric writing (console, JSONL, wandb),
progress with steps/s and ETA, checkpoints every N steps and at the end, and automatic resume: when ``workdir``
holds a checkpoint, training continues from it. The task batch is split over the devices of a ``tasks`` mesh
axis (``sharding``); theta and the outer optimizer state are replicated. The RNG of step ``i`` is
``fold_in(base_key, i)``, so a resumed run draws exactly the keys the uninterrupted run would have.

The body is four named steps: ``_build`` (initial state from the seed), ``_restore`` (from the newest verified
checkpoint), ``_place`` (mesh, shardings, compiled steps) and ``_loop`` (steps, metrics, evaluations,
checkpoints); ``meta_train`` checks its arguments and runs them in order.
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

from lopt import arguments, checkpoints, progress, writers
from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import sharding
from lopt.meta_trainers import stability as stability_lib
from lopt.meta_trainers.estimator import GradientEstimator
from lopt.meta_trainers.objectives import tree_finite
from lopt.tasks.base import TaskFamily, TaskSampler
from lopt.types import MetaParams, PyTree
from lopt.workdir import Workdir

WriterFactory = Callable[[], writers.MetricWriter]


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
  learning_rate = arguments.real("meta_optimizer.learning_rate", learning_rate, minimum=0.0, open_minimum=True)
  clip_norm = arguments.real("meta_optimizer.clip_norm", clip_norm, minimum=0.0, open_minimum=True)
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


@dataclasses.dataclass
class _Run:
  """Everything the loop reads and updates. ``theta``, ``opt_state`` and ``est_states`` are placed on devices."""

  architecture: LearnedOptimizer
  task_sampler: TaskSampler
  meta_optimizer: optax.GradientTransformation
  families: dict[str, TaskFamily]
  init_theta: MetaParams
  loop_key: jax.Array
  workdir: Workdir
  theta: Any = None
  opt_state: Any = None
  est_states: dict[str, Any] = dataclasses.field(default_factory=dict)
  steps: dict[str, Callable] = dataclasses.field(default_factory=dict)
  start_step: int = 0

  def host_state(self, step: int) -> dict[str, Any]:
    """The checkpointed state, gathered to the host (a collective with several processes)."""
    return sharding.to_host({"theta": self.theta, "outer_opt_state": self.opt_state, "estimator": self.est_states,
                             "step": np.int64(step)})


def _build(*, task_sampler: TaskSampler, architecture: LearnedOptimizer, estimator: GradientEstimator,
           meta_optimizer: optax.GradientTransformation, seed: int, workdir: Workdir) -> tuple[_Run, PyTree]:
  """The run and its initial host state, computed from the seed alone (identically in every process)."""
  base_key = jax.random.key(seed)
  theta_key, est_key, loop_key = jax.random.split(base_key, 3)
  init_theta = sharding.to_host(architecture.init(theta_key))
  families = {f.name: f for f in task_sampler.families}
  est_states = {name: estimator.init(init_theta, jax.random.fold_in(est_key, i), task_family=f,
                                     learned_optimizer=architecture)
                for i, (name, f) in enumerate(sorted(families.items()))}
  state = sharding.to_host({"theta": init_theta, "outer_opt_state": meta_optimizer.init(init_theta),
                            "estimator": est_states, "step": np.int64(0)})
  run = _Run(architecture=architecture, task_sampler=task_sampler, meta_optimizer=meta_optimizer, families=families,
             init_theta=init_theta, loop_key=loop_key, workdir=workdir)
  return run, state


def _restore(run: _Run, state: PyTree, *, main_process: bool) -> PyTree:
  """``state`` replaced by the newest verified checkpoint of the workdir, if there is one."""
  ckpt_dir = run.workdir.checkpoints
  if checkpoints.latest_step(ckpt_dir) is None:
    return state
  state, _ = checkpoints.restore(ckpt_dir, state)
  logging.info("Resuming from step %d in %s", int(state["step"]), ckpt_dir)
  if main_process:
    dropped = writers.truncate_jsonl(run.workdir.metrics, int(state["step"]))
    if dropped:
      logging.info("Dropped %d metric records logged after the checkpoint; they are computed again.", dropped)
  return state


def _place(run: _Run, state: PyTree, estimator: GradientEstimator, num_devices: int | None) -> None:
  """Builds the mesh, places the state on it and compiles (lazily) one meta-step per family."""
  task_axes = {name: estimator.task_axes(s) for name, s in state["estimator"].items()}
  sizes = sharding.task_batch_sizes(state["estimator"], task_axes)
  num_devices = sharding.resolve_num_devices(num_devices, sizes, num_tasks=estimator.num_tasks)
  placement = sharding.Placement(sharding.task_mesh(num_devices))
  logging.info(sharding.describe(placement, estimator.num_tasks))
  est_shardings = {name: placement.task_sharded(state["estimator"][name], task_axes[name]) for name in run.families}
  run.theta = placement.place(state["theta"], placement.replicated)
  run.opt_state = placement.place(state["outer_opt_state"], placement.replicated)
  run.est_states = {name: placement.place(state["estimator"][name], est_shardings[name]) for name in run.families}
  run.steps = {name: make_meta_step(estimator, f, run.architecture, run.meta_optimizer, placement,
                                    est_shardings[name]) for name, f in run.families.items()}
  run.start_step = int(state["step"])


def _loop(run: _Run, *, num_outer_steps: int, writer: writers.MetricWriter, log_every: int, checkpoint_every: int,
          keep_checkpoints: int, meta_eval: Callable[..., Mapping[str, float]] | None, meta_eval_every: int,
          handle_signals: bool, main_process: bool,
          guard: stability_lib.Guard | None = None) -> tuple[int, dict[str, float], bool]:
  """Runs the outer steps from ``run.start_step``; returns ``(step reached, last metrics, interrupted)``."""
  pending: list[Mapping[str, jax.Array]] = []
  last_metrics: dict[str, float] = {}
  tracker = progress.Progress(num_outer_steps - run.start_step, unit="steps")
  done = run.start_step

  def save(step: int) -> None:
    host_state = run.host_state(step)  # every process takes part in the gather; process 0 alone writes
    if main_process:
      path = checkpoints.save(run.workdir.checkpoints, step, host_state, keep=keep_checkpoints)
      logging.info("Wrote checkpoint %s", path)

  with _stop_requests(handle_signals) as stop_requested:
    for step in range(run.start_step, num_outer_steps):
      key = jax.random.fold_in(run.loop_key, step)
      family = run.task_sampler.sample(jax.random.fold_in(key, 0))
      key_data = np.asarray(jax.random.key_data(jax.random.fold_in(key, 1)))
      run.theta, run.opt_state, run.est_states[family.name], metrics = run.steps[family.name](
          run.theta, run.opt_state, run.est_states[family.name], key_data)
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
        if guard is not None:  # stability guard (stability.py): may roll theta back
          run.theta, run.opt_state = guard.on_metrics(run.theta, run.opt_state, done, last_metrics)
      # Evaluations are local computations; only process 0 writes their results, so only it runs them.
      if (meta_eval is not None and meta_eval_every and main_process
          and (done % meta_eval_every == 0 or done == num_outer_steps)):
        scores = meta_eval(theta=sharding.to_host(run.theta), step=done, architecture=run.architecture,
                           task_sampler=run.task_sampler)
        writer.write_scalars(done, {f"meta_eval/{k}": float(v) for k, v in scores.items()})
        if guard is not None:  # stability guard (stability.py): keeps the best theta, may roll back
          run.theta, run.opt_state = guard.on_meta_eval(run.theta, run.opt_state, done, scores)
      if stop:
        save(done)
        logging.warning("Stopped at step %d; a checkpoint is written and the run resumes from it.", done)
        return done, last_metrics, True
      if done % checkpoint_every == 0 and done != num_outer_steps:
        save(done)
  save(done)
  return done, last_metrics, False


def _check_arguments(*, num_outer_steps: int, seed: int, log_every: int, checkpoint_every: int,
                     keep_checkpoints: int, meta_eval: Any, meta_eval_every: int, handle_signals: bool,
                     num_devices: int | None, wandb_mode: str) -> None:
  arguments.integer("meta_train.num_outer_steps", num_outer_steps, minimum=0)
  arguments.integer("meta_train.seed", seed, minimum=0)
  arguments.integer("meta_train.log_every", log_every, minimum=1)
  arguments.integer("meta_train.checkpoint_every", checkpoint_every, minimum=1)
  arguments.integer("meta_train.keep_checkpoints", keep_checkpoints, minimum=1)
  arguments.integer("meta_train.meta_eval_every", meta_eval_every, minimum=0)
  arguments.boolean("meta_train.handle_signals", handle_signals)
  arguments.optional_integer("meta_train.num_devices", num_devices, minimum=1)
  arguments.choice("meta_train.wandb_mode", wandb_mode, writers.WANDB_MODES)
  if meta_eval_every and meta_eval is None:
    raise arguments.ArgumentError("meta_train.meta_eval_every", f"{meta_eval_every} needs a meta_eval function "
                                  "(e.g. meta_train.meta_eval = @periodic_meta_eval()).")


def meta_train(*, task_sampler: TaskSampler, architecture: LearnedOptimizer, estimator: GradientEstimator,
               num_outer_steps: int, workdir: str, seed: int = 0,
               meta_optimizer: optax.GradientTransformation | None = None, log_every: int = 10,
               checkpoint_every: int = 100, keep_checkpoints: int = 3, wandb_mode: str = "offline",
               config_text: str | None = None, final_evaluation: Callable[..., Any] | None = None,
               meta_eval: Callable[..., Mapping[str, float]] | None = None, meta_eval_every: int = 0,
               handle_signals: bool = True, num_devices: int | None = None,
               writer_factory: WriterFactory | None = None,
               stability: stability_lib.StabilityGuard | None = None) -> MetaTrainResult:
  """Meta-trains ``architecture`` on tasks from ``task_sampler`` with ``estimator``.

  Args:
    task_sampler: chooses the task family of each outer step.
    architecture: the learned optimizer whose theta is trained.
    estimator: the meta-gradient estimator (e.g. ``pes(...)``).
    num_outer_steps: total outer steps; a resumed run counts the steps already done.
    workdir: the run directory (``lopt.workdir``): checkpoints, metrics and wandb files; resumed from when it holds
      a checkpoint.
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
    writer_factory: ``() -> MetricWriter`` called once on process 0 to build the run's writers; default
      ``writers.create_default_writers(workdir, wandb_mode=..., config_text=...)`` (console, JSONL, wandb,
      TensorBoard when installed). Tests pass their own.
    stability: a ``stability.stability_guard()``: keeps the best theta by ``meta_eval`` (a ``best`` checkpoint),
      rolls back and lowers the outer learning rate when the run climbs; the result's theta is the best one.

  Returns:
    A ``MetaTrainResult``.
  """
  _check_arguments(num_outer_steps=num_outer_steps, seed=seed, log_every=log_every,
                   checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, meta_eval=meta_eval,
                   meta_eval_every=meta_eval_every, handle_signals=handle_signals, num_devices=num_devices,
                   wandb_mode=wandb_mode)
  checkpoints.ensure_writable_dir(workdir)
  main_process = sharding.is_main_process()
  meta_optimizer, guard = stability_lib.setup(stability, meta_optimizer or default_meta_optimizer(),
                                              meta_eval=meta_eval, meta_eval_every=meta_eval_every,
                                              workdir=workdir, main_process=main_process)
  run, state = _build(task_sampler=task_sampler, architecture=architecture, estimator=estimator,
                      meta_optimizer=meta_optimizer, seed=seed,
                      workdir=Workdir(workdir))
  state = _restore(run, state, main_process=main_process)
  _place(run, state, estimator, num_devices)
  if not main_process:
    writer: writers.MetricWriter = writers.NullWriter()
  elif writer_factory is not None:
    writer = writer_factory()
  else:
    writer = writers.create_default_writers(workdir, wandb_mode=wandb_mode, config_text=config_text)
  logging.info("Meta-training %s (%d meta-parameters) with %s for %d outer steps from step %d.",
               architecture.name, architecture.num_meta_parameters(), estimator.name, num_outer_steps,
               run.start_step)
  try:
    done, last_metrics, interrupted = _loop(
        run, num_outer_steps=num_outer_steps, writer=writer, log_every=log_every, checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints, meta_eval=meta_eval, meta_eval_every=meta_eval_every,
        handle_signals=handle_signals, main_process=main_process, guard=guard)
  finally:
    writer.close()
  theta = sharding.to_host(guard.final_theta(run.theta, run.opt_state) if guard else run.theta)
  if interrupted:
    return MetaTrainResult(theta=theta, step=done, metrics=last_metrics, interrupted=True)
  evaluation = None
  if final_evaluation is not None and main_process:
    evaluation = final_evaluation(theta=theta, init_theta=run.init_theta, architecture=architecture,
                                  task_sampler=task_sampler, workdir=workdir)
  return MetaTrainResult(theta=theta, step=done, metrics=last_metrics, evaluation=evaluation)
