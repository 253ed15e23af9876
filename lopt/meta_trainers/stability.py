"""A stability guard for meta-training: keep the best theta, detect a run that climbs, roll back and slow down.

Long PES runs can rot: the meta-loss falls, then climbs far above its best while nothing warns, and the last theta
is worse than the initialisation. The guard (``meta_train(stability=stability_guard(...))``) applies this policy:

1. **Best theta.** After every periodic meta-evaluation (``meta_eval``, required), the score ``metric`` (lower is
   better) is compared with the best so far. An improvement makes theta the best: it is kept in the outer optimizer
   state and written as the workdir's ``best`` checkpoint (``Workdir.best_checkpoints``).
2. **Climb detection.** The run is *climbing* when the meta-eval score exceeds ``eval_factor`` times its best, or
   when the trailing mean (an EMA over logged steps) of the meta-loss exceeds ``loss_factor`` times its lowest
   value, or when either is not finite. lopt's estimators mask diverged tasks, so their logged meta-loss is always
   finite; a logged window whose every step had all tasks masked (``fully_masked_steps`` and no ``meta_loss``, see
   ``masking``) is how a non-finite meta-loss shows, and counts as one.
3. **Reaction.** A warning, then theta and the outer optimizer's moments are rolled back to the best theta's, and
   the outer learning rate is multiplied by ``lr_factor`` (updates are scaled, so nothing recompiles). The
   meta-loss EMA restarts from its best. After ``max_rollbacks`` rollbacks the guard only warns.
4. **Artefact.** ``meta_train`` returns the best theta, and ``lopt.runs.trained.load`` loads ``best`` when present.

All guard state (best theta and its outer-optimizer state, best score, EMAs, the learning-rate scale, rollback
count) lives in the outer optimizer state (``GuardState``), so it is checkpointed with the run and a resumed run
continues exactly. The guard is host-side logic run by process 0, so it needs a single-process run.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from lopt import arguments, checkpoints
from lopt.types import MetaParams, PyTree
from lopt.workdir import Workdir


@dataclasses.dataclass(frozen=True)
class StabilityGuard:
  """Settings of the guard (see the module docstring); build with ``stability_guard``."""

  metric: str = "mean/final_train_loss_vs_adam"
  eval_factor: float = 1.5
  loss_factor: float = 3.0
  loss_ema: float = 0.9
  warmup_logs: int = 3
  lr_factor: float = 0.5
  max_rollbacks: int = 5


def stability_guard(*, metric: str = "mean/final_train_loss_vs_adam", eval_factor: float = 1.5,
                    loss_factor: float = 3.0, loss_ema: float = 0.9, warmup_logs: int = 3, lr_factor: float = 0.5,
                    max_rollbacks: int = 5) -> StabilityGuard:
  """The guard's settings, checked (gin: ``meta_train.stability = @stability_guard()``).

  Args:
    metric: the ``meta_eval`` scalar that ranks thetas (lower is better), e.g. ``mean/test_loss``.
    eval_factor: climbing when the score is above this multiple of its best (> 1).
    loss_factor: climbing when the meta-loss EMA is above this multiple of its lowest value (> 1).
    loss_ema: decay of the meta-loss EMA over logged steps, in [0, 0.999].
    warmup_logs: logged steps before the meta-loss EMA is compared (its first values are noisy).
    lr_factor: the outer learning rate is multiplied by this at each rollback, in (0, 1].
    max_rollbacks: rollbacks before the guard only warns.
  """
  if not isinstance(metric, str) or not metric:
    raise arguments.ArgumentError("stability_guard.metric", f"must be the name of a meta_eval score, got {metric!r}.")
  arguments.real("stability_guard.eval_factor", eval_factor, minimum=1.0, open_minimum=True)
  arguments.real("stability_guard.loss_factor", loss_factor, minimum=1.0, open_minimum=True)
  arguments.real("stability_guard.loss_ema", loss_ema, minimum=0.0, maximum=0.999)
  arguments.integer("stability_guard.warmup_logs", warmup_logs, minimum=0)
  arguments.real("stability_guard.lr_factor", lr_factor, minimum=0.0, maximum=1.0, open_minimum=True)
  arguments.integer("stability_guard.max_rollbacks", max_rollbacks, minimum=0)
  return StabilityGuard(metric=metric, eval_factor=float(eval_factor), loss_factor=float(loss_factor),
                        loss_ema=float(loss_ema), warmup_logs=int(warmup_logs), lr_factor=float(lr_factor),
                        max_rollbacks=int(max_rollbacks))


class GuardState(NamedTuple):
  """The outer optimizer state under a guard: the wrapped optimizer's state plus the guard's (checkpointed)."""

  inner: optax.OptState
  lr_scale: jax.Array
  best_theta: MetaParams
  best_inner: optax.OptState
  best_score: jax.Array  # +inf until the first meta-evaluation
  best_step: jax.Array  # -1: no best yet
  loss_ema: jax.Array
  best_loss_ema: jax.Array
  num_logs: jax.Array
  rollbacks: jax.Array


def guarded(meta_optimizer: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``meta_optimizer`` with its updates scaled by ``GuardState.lr_scale``; the guard's fields pass through.

  Extra arguments (``loss=``, which a learned outer optimizer reads) reach ``meta_optimizer``.
  """
  meta_optimizer = optax.with_extra_args_support(meta_optimizer)

  def init(theta):
    inner = meta_optimizer.init(theta)
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    return GuardState(inner=inner, lr_scale=f32(1.0), best_theta=theta, best_inner=inner, best_score=f32(jnp.inf),
                      best_step=jnp.asarray(-1, jnp.int32), loss_ema=f32(jnp.nan), best_loss_ema=f32(jnp.inf),
                      num_logs=jnp.asarray(0, jnp.int32), rollbacks=jnp.asarray(0, jnp.int32))

  def update(updates, state, params=None, **extra):
    updates, inner = meta_optimizer.update(updates, state.inner, params, **extra)
    updates = jax.tree.map(lambda u: u * state.lr_scale.astype(u.dtype), updates)
    return updates, state._replace(inner=inner)

  return optax.GradientTransformationExtraArgs(init, update)


def _to_host(tree: PyTree) -> PyTree:
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _like(host: PyTree, placed: PyTree) -> PyTree:
  """``host`` values placed where the leaves of ``placed`` live (same structure)."""
  return jax.tree.map(lambda h, p: jax.device_put(np.asarray(h, dtype=p.dtype), p.sharding), host, placed)


class Guard:
  """The guard of one ``meta_train`` call: reads and updates the run's theta and ``GuardState`` on the host."""

  def __init__(self, settings: StabilityGuard, workdir: Workdir, *, main_process: bool):
    self.settings = settings
    self.workdir = workdir
    self.main_process = main_process
    self.events: list[dict[str, Any]] = []  # what fired, for callers and tests

  def _set(self, opt_state: GuardState, **values: Any) -> GuardState:
    return opt_state._replace(**{k: _like(v, getattr(opt_state, k)) for k, v in values.items()})

  def _rollback(self, theta: Any, opt_state: GuardState, step: int, why: str) -> tuple[Any, GuardState]:
    s = self.settings
    rollbacks = int(opt_state.rollbacks)
    best_step = int(opt_state.best_step)
    event = {"step": step, "why": why, "best_step": best_step, "rolled_back": False}
    self.events.append(event)
    if best_step < 0 or rollbacks >= s.max_rollbacks:
      reason = "no best theta yet" if best_step < 0 else f"{rollbacks} rollbacks done (max_rollbacks)"
      logging.warning("Stability guard at step %d: %s; not rolling back (%s).", step, why, reason)
      return theta, opt_state
    scale = float(opt_state.lr_scale) * s.lr_factor
    logging.warning("Stability guard at step %d: %s. Rolling back to the best theta (step %d) and scaling the outer "
                    "learning rate to %.3g of its configured value (rollback %d of at most %d).", step, why,
                    best_step, scale, rollbacks + 1, s.max_rollbacks)
    event.update(rolled_back=True, lr_scale=scale)
    theta = _like(_to_host(opt_state.best_theta), theta)
    opt_state = opt_state._replace(inner=_like(_to_host(opt_state.best_inner), opt_state.inner))
    return theta, self._set(opt_state, lr_scale=np.float32(scale), rollbacks=np.int32(rollbacks + 1),
                            loss_ema=np.asarray(opt_state.best_loss_ema))

  def on_metrics(self, theta: Any, opt_state: GuardState, step: int,
                 metrics: Mapping[str, float]) -> tuple[Any, GuardState]:
    """After a metrics write: updates the meta-loss EMA; rolls back when it climbs far above its lowest value, is
    not finite, or when every step of the window had all its tasks masked (no meta-loss at all)."""
    if "meta_loss" not in metrics:
      if metrics.get("fully_masked_steps", 0) > 0:  # every logged step masked: the meta-loss diverged
        return self._rollback(theta, opt_state, step, f"every task of the {int(metrics['fully_masked_steps'])} "
                              "logged step(s) was masked (no finite meta-loss)")
      return theta, opt_state
    s = self.settings
    loss = float(metrics["meta_loss"])
    ema = float(opt_state.loss_ema)
    ema = loss if not np.isfinite(ema) else s.loss_ema * ema + (1 - s.loss_ema) * loss
    num_logs = int(opt_state.num_logs) + 1
    best = float(opt_state.best_loss_ema)
    if num_logs > s.warmup_logs and np.isfinite(ema):
      best = min(best, ema)
    opt_state = self._set(opt_state, loss_ema=np.float32(ema), best_loss_ema=np.float32(best),
                          num_logs=np.int32(num_logs))
    if not np.isfinite(loss) or (np.isfinite(best) and ema > s.loss_factor * best):
      return self._rollback(theta, opt_state, step, f"meta-loss EMA {ema:.4g} is above {s.loss_factor:g}x its "
                            f"lowest {best:.4g}")
    return theta, opt_state

  def on_meta_eval(self, theta: Any, opt_state: GuardState, step: int,
                   scores: Mapping[str, float]) -> tuple[Any, GuardState]:
    """After a meta-evaluation: keeps theta as the best when its score improves; rolls back when it climbs."""
    s = self.settings
    if s.metric not in scores:
      raise arguments.ArgumentError("stability_guard.metric", f"'{s.metric}' is not a meta_eval score; scores: "
                                    f"{', '.join(sorted(scores))}.")
    score = float(scores[s.metric])
    best = float(opt_state.best_score)
    if np.isfinite(score) and score < best:
      opt_state = opt_state._replace(best_theta=jax.tree.map(jnp.copy, theta),
                                     best_inner=jax.tree.map(jnp.copy, opt_state.inner))
      opt_state = self._set(opt_state, best_score=np.float32(score), best_step=np.int32(step))
      if self.main_process:
        checkpoints.save(self.workdir.best_checkpoints, step, {"theta": _to_host(theta), "step": np.int64(step),
                                                               "score": np.float64(score)}, keep=1)
      return theta, opt_state
    if not np.isfinite(score) or score > s.eval_factor * best:
      return self._rollback(theta, opt_state, step, f"meta-eval {s.metric} = {score:.4g} is above "
                            f"{s.eval_factor:g}x its best {best:.4g}")
    return theta, opt_state

  def final_theta(self, theta: Any, opt_state: GuardState) -> Any:
    """The run's artefact: the best theta when a meta-evaluation chose one, else the last."""
    return opt_state.best_theta if int(opt_state.best_step) >= 0 else theta


def check_resume(raw_outer_opt_state: Any, *, guarded: bool, path: str) -> None:
  """Refuses, in one line naming ``meta_train.stability``, a checkpoint written with(out) a guard resumed without
  (with) one: the outer optimizer states differ in structure, so fitting them would fail with a tree dump.

  Args:
    raw_outer_opt_state: the checkpoint's ``outer_opt_state`` entry as read (a state dict).
    guarded: whether the resuming run has a guard.
    path: the checkpoint file, for the message.
  """
  had = isinstance(raw_outer_opt_state, Mapping) and set(GuardState._fields) <= set(raw_outer_opt_state)
  if guarded and not had:
    raise arguments.ArgumentError(
        "meta_train.stability", f"the run was started without a stability guard (checkpoint {path}), and a guard "
        "cannot be added when resuming: its state (best theta, learning-rate scale) is part of the checkpoint. "
        "Remove the meta_train.stability binding to resume, or start a new --workdir (warm-start it from "
        "lopt.load_trained(workdir).theta).")
  if had and not guarded:
    raise arguments.ArgumentError(
        "meta_train.stability", f"the run was started with a stability guard (checkpoint {path}), and resuming it "
        "needs one: bind meta_train.stability = @stability_guard() as in its config.gin, or start a new --workdir.")


def setup(settings: StabilityGuard | None, meta_optimizer: optax.GradientTransformation, *, meta_eval: Any,
          meta_eval_every: int, workdir: str,
          main_process: bool) -> tuple[optax.GradientTransformation, Guard | None]:
  """The outer optimizer ``meta_train`` uses and its guard: ``(meta_optimizer, None)`` without settings."""
  if settings is None:
    return meta_optimizer, None
  if not isinstance(settings, StabilityGuard):
    raise arguments.ArgumentError("meta_train.stability", f"must be @stability_guard() or None, got {settings!r}.")
  if meta_eval is None or not meta_eval_every:
    raise arguments.ArgumentError("meta_train.stability", "needs a periodic meta-evaluation to rank thetas: set "
                                  "meta_train.meta_eval = @periodic_meta_eval() and meta_train.meta_eval_every.")
  if jax.process_count() > 1:
    raise arguments.ArgumentError("meta_train.stability", "runs on one process only (its decisions are made on "
                                  f"process 0), got {jax.process_count()} processes.")
  return guarded(meta_optimizer), Guard(settings, Workdir(workdir), main_process=main_process)
