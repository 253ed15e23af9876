"""The stability guard: a deliberately unstable meta-training run (outer learning rate 1.0) makes it fire, roll
back to the best theta and lower the outer learning rate; the kept theta still trains a task and is what
``trained.load`` loads. Fast host-side tests pin each part of the guard (extra arguments, learning-rate scale, best
theta, rollback of theta and moments, max_rollbacks, the fully masked window); a run whose every task is masked
reaches that last trigger."""

import os

import jax
import numpy as np
import optax
import pytest

from lopt import arguments, checkpoints
from lopt.architectures import ff
from lopt.evaluation import hooks, training
from lopt.meta_trainers import outer_loop, stability
from lopt.meta_trainers import pes as pes_lib
from lopt.runs import trained
from lopt.tasks import fixed, quadratic
from lopt.workdir import Workdir

ARCHITECTURE_GIN = "meta_train.architecture = @architectures.ff()\narchitectures.ff.hidden_sizes = (8,)\n"


def _run(workdir, *, learning_rate, num_outer_steps=4, **kw):
  return outer_loop.meta_train(
      task_sampler=fixed(quadratic(dim=4)), architecture=ff.ff(hidden_sizes=(8,)),
      estimator=pes_lib.pes(num_tasks=2, truncation_length=5, horizon=20), num_outer_steps=num_outer_steps,
      workdir=str(workdir), wandb_mode="disabled", log_every=1, checkpoint_every=100,
      meta_optimizer=outer_loop.default_meta_optimizer(learning_rate=learning_rate),
      meta_eval=hooks.periodic_meta_eval(num_tasks=2, num_steps=20, fast_compile=True), meta_eval_every=2, **kw)


def test_guard_fires_on_an_unstable_run_and_keeps_a_theta_that_trains(tmp_path, caplog):
  with caplog.at_level("WARNING"):
    result = _run(tmp_path, learning_rate=1.0, stability=stability.stability_guard())
  fired = [r.getMessage() for r in caplog.records if "Stability guard at step 4" in r.getMessage()]
  assert fired and "Rolling back to the best theta (step 2)" in fired[0], [r.getMessage() for r in caplog.records]
  layout = Workdir(str(tmp_path))
  assert checkpoints.latest_step(layout.best_checkpoints) == 2
  best, _ = checkpoints.restore_entry(layout.best_checkpoints, "theta", result.theta)
  for a, b in zip(jax.tree.leaves(best), jax.tree.leaves(result.theta)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the result is the best theta, not the last
  # The latest checkpoint carries the lowered outer learning rate and the rollback count (exact resume).
  target = stability.guarded(outer_loop.default_meta_optimizer()).init(result.theta)
  saved, _ = checkpoints.restore_entry(layout.checkpoints, "outer_opt_state", target)
  assert float(saved.lr_scale) == 0.5 and int(saved.rollbacks) == 1 and int(saved.best_step) == 2
  # The kept theta trains a task: on new quadratics its loss falls, stays finite and ends below Adam(1e-3)'s.
  architecture = ff.ff(hidden_sizes=(8,))
  adam = lambda n: optax.with_extra_args_support(optax.adam(1e-3))
  kept, baseline = [training.train_tasks(quadratic(dim=4), make, jax.random.key(7), num_tasks=2,
                                         num_steps=20)["train_loss"]
                    for make in (lambda n: architecture.optimizer(result.theta, num_steps=n), adam)]
  assert np.all(np.isfinite(kept)) and np.mean(kept[:, -1]) < np.mean(kept[:, 0])
  assert np.mean(kept[:, -1]) < np.mean(baseline[:, -1])
  # trained.load picks best/ (step 2), unless a step is asked for.
  (tmp_path / "config.gin").write_text(ARCHITECTURE_GIN)
  assert trained.load(str(tmp_path)).step == 2
  assert trained.load(str(tmp_path), step=4).step == 4


@pytest.mark.slow
def test_guard_state_is_checkpointed_and_a_stable_run_is_left_alone(tmp_path):
  result = _run(tmp_path, learning_rate=1e-4, stability=stability.stability_guard())
  assert result.step == 4
  opt_state = stability.guarded(outer_loop.default_meta_optimizer()).init(result.theta)
  saved, _ = checkpoints.restore_entry(Workdir(str(tmp_path)).checkpoints, "outer_opt_state", opt_state)
  assert float(saved.lr_scale) == 1.0 and int(saved.rollbacks) == 0 and int(saved.best_step) in (2, 4)


def test_guard_needs_meta_eval_and_checks_its_settings(tmp_path):
  with pytest.raises(arguments.ArgumentError, match="meta_train.stability.*periodic meta-evaluation"):
    outer_loop.meta_train(task_sampler=fixed(quadratic(dim=4)), architecture=ff.ff(hidden_sizes=(8,)),
                          estimator=pes_lib.pes(num_tasks=2, truncation_length=5, horizon=20), num_outer_steps=1,
                          workdir=str(tmp_path), wandb_mode="disabled", stability=stability.stability_guard())
  with pytest.raises(arguments.ArgumentError, match="stability_guard.lr_factor"):
    stability.stability_guard(lr_factor=2.0)
  with pytest.raises(arguments.ArgumentError, match="stability_guard.eval_factor"):
    stability.stability_guard(eval_factor=1.0)
  assert not os.path.exists(Workdir(str(tmp_path)).best_checkpoints)


def test_meta_loss_climb_rolls_back_without_a_new_meta_eval(tmp_path):
  guard = stability.Guard(stability.stability_guard(warmup_logs=0, loss_ema=0.0), Workdir(str(tmp_path)),
                          main_process=True)
  theta = {"w": jax.numpy.zeros(3)}
  opt_state = stability.guarded(outer_loop.default_meta_optimizer()).init(theta)
  theta, opt_state = guard.on_meta_eval(theta, opt_state, 1, {guard.settings.metric: 0.5})
  moved = {"w": jax.numpy.ones(3)}
  moved, opt_state = guard.on_metrics(moved, opt_state, 2, {"meta_loss": 1.0})
  moved, opt_state = guard.on_metrics(moved, opt_state, 3, {"meta_loss": 2.0})  # 2x: tolerated
  assert not guard.events and float(moved["w"][0]) == 1.0
  moved, opt_state = guard.on_metrics(moved, opt_state, 4, {"meta_loss": 5.0})  # 5x its lowest: climbing
  assert guard.events[-1]["rolled_back"] and float(moved["w"][0]) == 0.0 and float(opt_state.lr_scale) == 0.5
  moved, opt_state = guard.on_metrics(moved, opt_state, 5, {"meta_loss": float("nan")})  # not finite: fires too
  assert len(guard.events) == 2 and float(opt_state.lr_scale) == 0.25


# --- the guard's parts, on the host, without a run (fast) ------------------------------------------------------------

def _loss_scaler():
  """An outer optimizer whose update is ``-loss * grad``: it fails or changes when ``loss=`` does not reach it."""
  return optax.GradientTransformationExtraArgs(
      lambda params: optax.EmptyState(),
      lambda updates, state, params=None, *, loss, **extra: (jax.tree.map(lambda g: -loss * g, updates), state))


def test_guarded_passes_extra_arguments_and_scales_by_lr_scale():
  tx = stability.guarded(_loss_scaler())
  theta = {"w": jax.numpy.ones(2)}
  state = tx.init(theta)
  updates, _ = tx.update({"w": jax.numpy.ones(2)}, state, theta, loss=3.0)
  np.testing.assert_allclose(np.asarray(updates["w"]), -3.0)
  updates, _ = tx.update({"w": jax.numpy.ones(2)}, state._replace(lr_scale=jax.numpy.float32(0.25)), theta, loss=3.0)
  np.testing.assert_allclose(np.asarray(updates["w"]), -0.75)


def _guard(tmp_path, **kw):
  return stability.Guard(stability.stability_guard(**kw), Workdir(str(tmp_path)), main_process=True)


def test_guard_ships_the_best_theta_and_rolls_back_theta_moments_and_learning_rate(tmp_path):
  guard = _guard(tmp_path, max_rollbacks=2)
  metric = guard.settings.metric
  tx = stability.guarded(outer_loop.default_meta_optimizer(learning_rate=0.1))
  theta = {"w": jax.numpy.zeros(3)}
  opt_state = tx.init(theta)
  step = lambda th, st: (lambda u_s: (optax.apply_updates(th, u_s[0]), u_s[1]))(
      tx.update({"w": jax.numpy.ones(3)}, st, th, loss=1.0))
  theta, opt_state = step(theta, opt_state)
  best = np.asarray(theta["w"]).copy()
  best_mu = np.asarray(opt_state.inner[1][0].mu["w"]).copy()
  theta, opt_state = guard.on_meta_eval(theta, opt_state, 1, {metric: 0.5})
  theta, opt_state = step(theta, opt_state)  # a worse theta, but not climbing: kept running, not shipped
  theta, opt_state = guard.on_meta_eval(theta, opt_state, 2, {metric: 0.6})
  assert not guard.events and not np.allclose(np.asarray(theta["w"]), best)
  np.testing.assert_array_equal(np.asarray(guard.final_theta(theta, opt_state)["w"]), best)
  # Climbing (score above eval_factor x best): theta and the outer moments return to the best's, the rate halves.
  theta, opt_state = step(theta, opt_state)
  theta, opt_state = guard.on_meta_eval(theta, opt_state, 3, {metric: 0.9})
  assert guard.events[-1]["rolled_back"] and float(opt_state.lr_scale) == 0.5 and int(opt_state.rollbacks) == 1
  np.testing.assert_array_equal(np.asarray(theta["w"]), best)
  np.testing.assert_array_equal(np.asarray(opt_state.inner[1][0].mu["w"]), best_mu)
  theta, opt_state = guard.on_meta_eval(theta, opt_state, 4, {metric: float("nan")})  # not finite: climbing too
  assert float(opt_state.lr_scale) == 0.25 and int(opt_state.rollbacks) == 2
  theta, opt_state = guard.on_meta_eval(theta, opt_state, 5, {metric: 0.9})  # max_rollbacks reached: warns only
  assert not guard.events[-1]["rolled_back"] and float(opt_state.lr_scale) == 0.25


def test_a_window_of_fully_masked_steps_rolls_back(tmp_path):
  guard = _guard(tmp_path)
  theta = {"w": jax.numpy.zeros(3)}
  opt_state = stability.guarded(outer_loop.default_meta_optimizer()).init(theta)
  theta, opt_state = guard.on_meta_eval(theta, opt_state, 1, {guard.settings.metric: 0.5})
  moved = {"w": jax.numpy.ones(3)}
  moved, opt_state = guard.on_metrics(moved, opt_state, 2, {"meta_loss": 1.0, "fully_masked_steps": 1.0})
  assert not guard.events  # some step of the window had a valid task: it has a meta-loss
  moved, opt_state = guard.on_metrics(moved, opt_state, 3, {"fully_masked_steps": 1.0, "steps_per_sec": 1.0})
  assert guard.events[-1]["rolled_back"] and float(moved["w"][0]) == 0.0 and float(opt_state.lr_scale) == 0.5


def test_fully_masked_run_reaches_the_rollback(tmp_path, caplog):
  """Every task masked (max_loss below any loss): the trigger fires in a real run, after the first best theta."""
  with caplog.at_level("INFO"):
    outer_loop.meta_train(
        task_sampler=fixed(quadratic(dim=4)), architecture=ff.ff(hidden_sizes=(8,)),
        estimator=pes_lib.pes(num_tasks=2, truncation_length=5, horizon=20, max_loss=1e-9), num_outer_steps=3,
        workdir=str(tmp_path), wandb_mode="disabled", log_every=1, checkpoint_every=100,
        meta_eval=hooks.periodic_meta_eval(num_tasks=2, num_steps=20, fast_compile=True, compare_adam=False),
        meta_eval_every=2, stability=stability.stability_guard(metric="mean/final_train_loss"))
  messages = [r.getMessage() for r in caplog.records]
  assert any("Stability guard at step 3: every task" in m and "Rolling back to the best theta (step 2)" in m
             for m in messages), messages
  # Periodic meta-evaluation prints a progress line before and after.
  assert any(m.startswith("Meta-evaluation at step 2 of 3 ...") for m in messages)
  assert any(m.startswith("Meta-evaluation at step 2 of 3 done in") and "mean/final_train_loss = " in m
             for m in messages)
