"""``meta_train``: the outer loop that learns theta.

It owns the outer optax optimizer, one jitted meta-step per task family, metric writing (console, JSONL, wandb),
progress with steps/s and ETA, checkpoints every N steps and at the end, and automatic resume: when ``workdir``
holds a checkpoint, training continues from it. The task batch is split over the devices of a ``tasks`` mesh
axis (``sharding``); theta and the outer optimizer state are replicated. The RNG of step ``i`` is
``fold_in(base_key, i)``, so a resumed run draws exactly the keys the uninterrupted run would have.

The body is four named steps: ``_build`` (initial state from the seed), ``run_safety.restore_state`` (from the
newest verified checkpoint), ``_place`` (mesh, shardings, compiled steps) and ``_loop`` (steps, metrics, evaluations,
checkpoints); ``meta_train`` checks its arguments and runs them in order, holding the workdir's lock
(``lopt.locks``: one writer per workdir). ``run_safety`` holds the rules of docs/reliability.md for a workdir
(temporary files of a killed write removed, unverifiable checkpoints refused rather than skipped, metrics after the
restored step dropped, a finished run not evaluated again); ``masking`` handles outer steps whose every task is
masked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from lopt import arguments, checkpoints, locks, progress, writers
from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import masking, run_safety, sharding
from lopt.meta_trainers import stability as stability_lib
from lopt.meta_trainers import warm_start as warm_start_lib
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
    # A learned outer optimizer reads the meta-loss as its loss (optax ones ignore it).
    outer_loss = jnp.nan_to_num(jnp.asarray(metrics["meta_loss"], jnp.float32), nan=0.0, posinf=0.0, neginf=0.0)
    updates, new_opt_state = meta_optimizer.update(grad, opt_state, theta, loss=outer_loss)
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
  slots: dict[str, int] = dataclasses.field(default_factory=dict)
  start_step: int = 0
  restored: bool = False

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
  run.slots = {name: masking.task_slots(state["estimator"][name]) for name in run.families}
  run.start_step = int(state["step"])


# Outer steps over which steps_per_sec and eta_sec are measured.
PROGRESS_WINDOW = 50


def _loop(run: _Run, *, num_outer_steps: int, writer: writers.MetricWriter, log_every: int, checkpoint_every: int,
          keep_checkpoints: int, meta_eval: Callable[..., Mapping[str, float]] | None, meta_eval_every: int,
          handle_signals: bool, main_process: bool, max_fully_masked_steps: int,
          guard: stability_lib.Guard | None = None) -> tuple[int, dict[str, float], bool]:
  """Runs the outer steps from ``run.start_step``; returns ``(step reached, last metrics, interrupted)``."""
  pending = masking.MaskedSteps(run.slots, max_fully_masked_steps)
  last_metrics: dict[str, float] = {}
  # steps/s and ETA over the last steps, not from the start: the first step's compilation would dominate them.
  tracker = progress.Progress(num_outer_steps - run.start_step, unit="steps", window=PROGRESS_WINDOW)
  done = run.start_step

  def save(step: int) -> None:
    host_state = run.host_state(step)  # every process takes part in the gather; process 0 alone writes
    if main_process:
      try:
        path = checkpoints.save(run.workdir.checkpoints, step, host_state, keep=keep_checkpoints)
      except checkpoints.CheckpointWriteError as e:
        raise checkpoints.CheckpointWriteError(f"{e} The run stops at step {step}; the same command resumes from "
                                               "that checkpoint once the directory is writable again.") from e
      logging.info("Wrote checkpoint %s", path)

  with _stop_requests(handle_signals) as stop_requested:
    for step in range(run.start_step, num_outer_steps):
      key = jax.random.fold_in(run.loop_key, step)
      family = run.task_sampler.sample(jax.random.fold_in(key, 0))
      key_data = np.asarray(jax.random.key_data(jax.random.fold_in(key, 1)))
      run.theta, run.opt_state, run.est_states[family.name], metrics = run.steps[family.name](
          run.theta, run.opt_state, run.est_states[family.name], key_data)
      pending.push(step + 1, family.name, metrics)
      done = step + 1
      tracker.advance()
      # With several processes, a signal to any of them stops all of them after the same step.
      stop = sharding.any_process(bool(stop_requested))
      if done % log_every == 0 or done == num_outer_steps or stop or pending.error:
        last_metrics = masking.summarize(pending.take())
        last_metrics.update(steps_per_sec=tracker.rate(), eta_sec=tracker.eta())
        writer.write_scalars(done, last_metrics)
        if guard is not None:  # stability guard (stability.py): may roll theta back
          run.theta, run.opt_state = guard.on_metrics(run.theta, run.opt_state, done, last_metrics)
      if pending.error:
        raise pending.error
      # Evaluations are local computations; only process 0 writes their results, so only it runs them.
      if (meta_eval is not None and meta_eval_every and main_process
          and (done % meta_eval_every == 0 or done == num_outer_steps)):
        started = time.monotonic()
        logging.info("Meta-evaluation at step %d of %d ...", done, num_outer_steps)
        scores = meta_eval(theta=sharding.to_host(run.theta), step=done, architecture=run.architecture,
                           task_sampler=run.task_sampler)
        logging.info("Meta-evaluation at step %d of %d done in %.1f s: %s", done, num_outer_steps,
                     time.monotonic() - started, _headline(scores))
        writer.write_scalars(done, {f"meta_eval/{k}": float(v) for k, v in scores.items()})
        if guard is not None:  # stability guard (stability.py): keeps the best theta, may roll back
          run.theta, run.opt_state = guard.on_meta_eval(run.theta, run.opt_state, done, scores)
      if stop:
        save(done)
        logging.warning("Stopped at step %d; a checkpoint is written and the run resumes from it.", done)
        return done, last_metrics, True
      if done % checkpoint_every == 0 and done != num_outer_steps:
        save(done)
  if not (run.restored and done == run.start_step):  # a finished run's checkpoint is not written again
    save(done)
  return done, last_metrics, False


def _headline(scores: Mapping[str, float], limit: int = 4) -> str:
  """The scores a progress line shows: those averaged over families (``mean/...``) when there are any."""
  names = sorted(k for k in scores if k.startswith("mean/")) or sorted(scores)
  shown = ", ".join(f"{k} = {float(scores[k]):.4g}" for k in names[:limit])
  return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


# meta_train's plugin arguments: (argument, type it must have, how a gin file gives one).
_PLUGIN_ARGUMENTS = (("task_sampler", TaskSampler, "@task_samplers.fixed()"),
                     ("architecture", LearnedOptimizer, "@architectures.ff()"),
                     ("estimator", GradientEstimator, "@estimators.pes()"))


def _check_arguments(*, num_outer_steps: int, seed: int, log_every: int, checkpoint_every: int,
                     keep_checkpoints: int, meta_eval: Any, meta_eval_every: int, handle_signals: bool,
                     num_devices: int | None, wandb_mode: str, trust_unverified_checkpoints: bool,
                     max_fully_masked_steps: int, reevaluate: bool, warm_start: Any = None,
                     **plugins: Any) -> None:
  for name, kind, example in _PLUGIN_ARGUMENTS:
    value = plugins.get(name)
    if name in plugins and not isinstance(value, kind):
      # A factory bound without its parentheses (or a plugin of another kind) would fail deep inside the run.
      if callable(value):
        got = f"the factory {getattr(value, '__name__', value)!r} (add the parentheses)"
      else:
        label = getattr(value, "name", None)
        got = f"{type(value).__name__} {label!r}" if isinstance(label, str) else f"{value!r}"
      raise arguments.ArgumentError(f"meta_train.{name}", f"must be a {kind.__name__}, e.g. {example}, got {got}.")
  arguments.integer("meta_train.num_outer_steps", num_outer_steps, minimum=0)
  arguments.boolean("meta_train.trust_unverified_checkpoints", trust_unverified_checkpoints)
  arguments.integer("meta_train.max_fully_masked_steps", max_fully_masked_steps, minimum=0)
  arguments.boolean("meta_train.reevaluate", reevaluate)
  if warm_start is not None and (not isinstance(warm_start, str) or not warm_start):
    raise arguments.ArgumentError("meta_train.warm_start", f"must be a directory written by "
                                  f"experiments/export_warm_start.py, got {warm_start!r}.")
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
               writer_factory: WriterFactory | None = None, trust_unverified_checkpoints: bool = False,
               max_fully_masked_steps: int = 20, reevaluate: bool = False,
               on_start: Callable[[], None] | None = None,
               stability: stability_lib.StabilityGuard | None = None,
               warm_start: str | None = None) -> MetaTrainResult:
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
    trust_unverified_checkpoints: resume from checkpoints whose checksum sidecar is missing; by default such a
      checkpoint is an error naming it (never skipped, never deleted).
    max_fully_masked_steps: consecutive outer steps with every task masked that stop the run with an error
      (``masking.FullyMaskedError``); 0 never stops. Such steps are logged without meta_loss and grad_norm.
    reevaluate: run ``final_evaluation`` again when resuming a run that is already finished and evaluated (its
      ``final_evaluation.json`` exists); by default that report is read back instead.
    on_start: called on process 0 once the state is restored (or initialised) and placed, before the first step;
      ``lopt.runs`` writes the workdir's ``config.gin`` there.
    stability: a ``stability.stability_guard()``: keeps the best theta by ``meta_eval`` (a ``best`` checkpoint),
      rolls back and lowers the outer learning rate when the run climbs; the result's theta is the best one.
    warm_start: a directory written by ``experiments/export_warm_start.py`` (``warm_start.export``): a workdir with
      no checkpoint starts from its theta, outer-optimizer state and step instead of the seed's, with fresh inner
      tasks. Ignored (logged) once the workdir has checkpoints of its own.

  Returns:
    A ``MetaTrainResult``.
  """
  _check_arguments(num_outer_steps=num_outer_steps, seed=seed, log_every=log_every,
                   checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, meta_eval=meta_eval,
                   meta_eval_every=meta_eval_every, handle_signals=handle_signals, num_devices=num_devices,
                   wandb_mode=wandb_mode, trust_unverified_checkpoints=trust_unverified_checkpoints,
                   max_fully_masked_steps=max_fully_masked_steps, reevaluate=reevaluate, warm_start=warm_start,
                   task_sampler=task_sampler,
                   architecture=architecture, estimator=estimator)
  checkpoints.ensure_writable_dir(workdir)
  main_process = sharding.is_main_process()
  # Only process 0 writes, so only it holds the lock (the others share its workdir on several hosts).
  with contextlib.ExitStack() as held:
    if main_process:
      held.enter_context(locks.hold(Workdir(workdir).lock))
      run_safety.prepare_workdir(Workdir(workdir))
    meta_optimizer, guard = stability_lib.setup(
        stability, optax.with_extra_args_support(meta_optimizer or default_meta_optimizer()), meta_eval=meta_eval,
        meta_eval_every=meta_eval_every, workdir=workdir, main_process=main_process)
    run, state = _build(task_sampler=task_sampler, architecture=architecture, estimator=estimator,
                        meta_optimizer=meta_optimizer, seed=seed, workdir=Workdir(workdir))
    check = lambda raw, path: stability_lib.check_resume(
        raw.get("outer_opt_state") if isinstance(raw, dict) else None, guarded=guard is not None, path=path)
    state, run.restored = run_safety.restore_state(run.workdir, state, main_process=main_process,
                                                 trust_unverified=trust_unverified_checkpoints, check=check)
    if warm_start is not None and run.restored:
      logging.info("Not applying the warm start %s: the workdir has checkpoints of its own.", warm_start)
    elif warm_start is not None:
      state = warm_start_lib.apply(warm_start, state)
    _place(run, state, estimator, num_devices)
    if on_start is not None and main_process:
      on_start()
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
          handle_signals=handle_signals, main_process=main_process, max_fully_masked_steps=max_fully_masked_steps,
          guard=guard)
    finally:
      writer.close()
    if run.restored and done == run.start_step and main_process and not last_metrics:
      last_metrics = run_safety.logged_metrics(run.workdir, done)  # a finished run: what it logged last
    theta = sharding.to_host(guard.final_theta(run.theta, run.opt_state) if guard else run.theta)
    if interrupted:
      return MetaTrainResult(theta=theta, step=done, metrics=last_metrics, interrupted=True)
    evaluation = None
    if final_evaluation is not None and main_process:
      evaluation = run_safety.final_evaluation_once(
          final_evaluation, run.workdir, ran_steps=done > run.start_step, finished_at=run.start_step,
          reevaluate=reevaluate, theta=theta, init_theta=run.init_theta, architecture=architecture,
          task_sampler=task_sampler)
    return MetaTrainResult(theta=theta, step=done, metrics=last_metrics, evaluation=evaluation)
