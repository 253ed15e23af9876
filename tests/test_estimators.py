"""Truncation schedules, diverging tasks, objectives and configuration of the estimators.

Every estimator's agreement with its exact reference (and the bias of the truncated ones) is tested in
``test_estimator_conformance.py`` on the harness of ``estimator_harness.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import combined, es, pes, tbptt, truncation
from lopt.meta_trainers import unroll as unroll_lib
from lopt.tasks import quadratic
from test_pes import ARCH, KW  # pylint: disable=wrong-import-order


def _jit_estimate(estimator, **kw):
  return jax.jit(lambda th, s, k: estimator.estimate(th, s, k, **kw))


# --- Diverging tasks ------------------------------------------------------------------------------------------


def _sgd(learning_rate: float) -> LearnedOptimizer:
  """SGD with a learnable log step size: unlike Adam, it diverges on curvatures above 2 / learning_rate."""

  def optimizer(theta, *, num_steps):
    del num_steps
    return optax.with_extra_args_support(optax.sgd(jnp.exp(theta["log_lr"])))

  return LearnedOptimizer(name="sgd", init=lambda key: {"log_lr": jnp.log(jnp.float32(learning_rate))},
                          optimizer=optimizer)


DIVERGING = dict(num_tasks=8, truncation_length=5, horizon=20, max_loss=10.0)
ESTIMATORS = {
    "tbptt_no_remat": lambda: tbptt.tbptt(**DIVERGING, remat=False),
    "es": lambda: es.es(**DIVERGING, num_pairs=2),
    "es_full": lambda: es.es(**DIVERGING, full_horizon=True),
    "pes": lambda: pes.pes(**DIVERGING),
    "combined": lambda: combined.combined(estimators=[tbptt.tbptt(**DIVERGING), pes.pes(**DIVERGING)]),
}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_diverging_tasks_are_masked_and_theta_stays_finite(name):
  # Curvatures log-uniform in [0.1, 1e4] with step 0.05: tasks above curvature 40 diverge, the rest converge.
  family = quadratic(dim=1, min_scale=0.1, max_scale=1e4)
  arch = _sgd(0.05)
  theta = arch.init(jax.random.key(0))
  estimator = ESTIMATORS[name]()
  kw = dict(task_family=family, learned_optimizer=arch)
  state = estimator.init(theta, jax.random.key(3), **kw)
  grad, state, metrics = jax.jit(lambda th, s, k: estimator.estimate(th, s, k, **kw))(theta, state,
                                                                                         jax.random.key(4))
  masked = int(metrics["masked_tasks"])
  assert 0 < masked < estimator.num_tasks, metrics
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))
  assert np.isfinite(float(metrics["meta_loss"]))
  updates, _ = optax.adam(1e-2).update(grad, optax.adam(1e-2).init(theta), theta)
  new_theta = optax.apply_updates(theta, updates)
  assert all(bool(jnp.all(jnp.isfinite(t))) for t in jax.tree.leaves(new_theta))


def test_every_task_diverging_still_gives_a_finite_zero_gradient():
  arch = _sgd(1e3)
  family = quadratic(dim=2)
  theta = arch.init(jax.random.key(0))
  estimator = tbptt.tbptt(num_tasks=2, truncation_length=5, horizon=10, max_loss=10.0)
  kw = dict(task_family=family, learned_optimizer=arch)
  state = estimator.init(theta, jax.random.key(0), **kw)
  grad, state, metrics = _jit_estimate(estimator, **kw)(theta, state, jax.random.key(1))
  assert int(metrics["masked_tasks"]) == 2
  np.testing.assert_array_equal(np.asarray(grad["log_lr"]), 0.0)
  assert np.all(np.asarray(state.step) >= np.asarray(state.horizon))  # restart at the next truncation


# --- Truncation schedules -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", truncation.SCHEDULES)
def test_horizons_are_multiples_of_the_truncation_length(name):
  schedule = truncation.make(name, truncation_length=7, horizon=300, min_horizon=20)
  for draw in (schedule.sample(jax.random.key(0), (512,)),
               schedule.sample_first(jax.random.key(1), (512,), stagger=True)):
    draw = np.asarray(draw)
    assert np.all(draw % 7 == 0) and np.all(draw >= 7) and np.all(draw <= schedule.max_horizon)
  if name == "log_uniform":
    horizons = np.asarray(schedule.sample(jax.random.key(0), (4096,)))
    assert horizons.min() == 21 and horizons.max() == 301
    assert np.median(horizons) < 150  # log-uniform: short episodes are as likely per octave as long ones
  if name == "constant":
    assert np.all(np.asarray(schedule.sample(jax.random.key(0), (4,))) == 301)
    first = np.asarray(schedule.sample_first(jax.random.key(1), (64,), stagger=True))
    assert len(np.unique(first)) > 10  # staggered starts


def test_never_ending_tasks_do_not_reset():
  estimator = tbptt.tbptt(num_tasks=2, truncation_length=5, schedule="never_ending")
  theta = ARCH.init(jax.random.key(0))
  state = estimator.init(theta, jax.random.key(0), **KW)
  estimate = _jit_estimate(estimator, **KW)
  for j in range(3):
    _, state, metrics = estimate(theta, state, jax.random.key(j))
    assert int(metrics["resets"]) == 0
  assert np.all(np.asarray(state.step) == 15)


def test_log_uniform_pes_resets_only_at_truncation_boundaries():
  estimator = pes.pes(num_tasks=8, truncation_length=5, horizon=30, schedule="log_uniform", min_horizon=5)
  theta = ARCH.init(jax.random.key(0))
  state = estimator.init(theta, jax.random.key(0), **KW)
  estimate = jax.jit(lambda th, s, k: estimator.estimate(th, s, k, **KW))
  resets = 0
  for j in range(6):
    _, state, metrics = estimate(theta, state, jax.random.key(j))
    resets += int(metrics["resets"])
    assert np.all(np.asarray(state.inner.step) % 5 == 0)
    assert np.all(np.asarray(state.inner.step) <= np.asarray(state.inner.horizon))
  assert resets > 0


@pytest.mark.slow
def test_remat_gives_the_same_gradient():
  kw = dict(num_tasks=2, truncation_length=5, horizon=10)
  theta = ARCH.init(jax.random.key(0))
  grads = []
  for remat in (False, True):
    estimator = tbptt.tbptt(**kw, remat=remat)
    state = estimator.init(theta, jax.random.key(0), **KW)
    grads.append(_jit_estimate(estimator, **KW)(theta, state, jax.random.key(1))[0])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), *grads)


def test_first_order_tbptt_matches_the_closed_form():
  # SGD on 0.5 * mean(a * (x - c)**2): x_{t+1} = x_t - lr * g_t. Treating every g_s as a constant,
  # d x_t / d lr = -sum_{s<t} g_s, so the first-order derivative of mean_t L_t is mean_t g_t . (-sum_{s<t} g_s).
  lr, k = 0.5, 5
  family = quadratic(dim=3, noise_std=0.0)
  kw = dict(task_family=family, learned_optimizer=_sgd(lr))
  theta = kw["learned_optimizer"].init(jax.random.key(0))
  grads = {}
  for first_order in (True, False):
    estimator = tbptt.tbptt(num_tasks=1, truncation_length=k, horizon=2 * k, stagger=False,
                            first_order=first_order)
    state = estimator.init(theta, jax.random.key(3), **kw)
    grads[first_order] = float(_jit_estimate(estimator, **kw)(theta, state, jax.random.key(4))[0]["log_lr"])
  scales, center = (np.asarray(v[0], np.float64) for v in (state.cfg["scales"], state.cfg["center"]))
  x = np.asarray(state.params["x"][0], np.float64)
  total, expected = np.zeros(3), 0.0
  for _ in range(k):
    g = scales * (x - center) / 3
    expected += g @ -total
    total, x = total + g, x - lr * g
  expected *= lr / k / scales.mean()  # d/d log(lr) = lr d/d lr; the objective is normalised by mean(scales).
  np.testing.assert_allclose(grads[True], expected, rtol=1e-4)
  assert abs(grads[False] - expected) > 0.05 * abs(expected)  # The Hessian terms matter here.


def test_final_and_outer_valid_objectives():
  theta = ARCH.init(jax.random.key(0))
  task = unroll_lib.init_task_state(theta, jax.random.key(0), 10, **KW)
  _, losses = unroll_lib.unroll(theta, task, jax.random.key(1), 5, **KW)
  for objective in ("mean", "final"):
    estimator = tbptt.tbptt(num_tasks=1, truncation_length=5, horizon=10, objective=objective,
                            meta_loss_split="outer_valid", stagger=False)
    assert estimator.settings.objective == objective
  from lopt.meta_trainers import objectives  # pylint: disable=import-outside-toplevel
  np.testing.assert_allclose(objectives.reduce(losses, "final"), losses[-1])
  np.testing.assert_allclose(objectives.reduce(losses, "mean"), jnp.mean(losses))
  with pytest.raises(ValueError, match="objective"):
    tbptt.tbptt(objective="best")


@pytest.mark.slow
def test_combined_averages_with_weights():
  a = tbptt.tbptt(num_tasks=2, truncation_length=5, horizon=10)
  estimator = combined.combined(estimators=[a, a], weights=[3.0, 1.0])
  theta = ARCH.init(jax.random.key(0))
  state = estimator.init(theta, jax.random.key(0), **KW)
  grad, _, metrics = _jit_estimate(estimator, **KW)(theta, state, jax.random.key(1))
  keys = jax.random.split(jax.random.key(1), 2)
  single = _jit_estimate(a, **KW)
  parts = [single(theta, s, k)[0] for s, k in zip(state, keys)]
  jax.tree.map(lambda g, p, q: np.testing.assert_allclose(g, 0.75 * p + 0.25 * q, rtol=1e-5), grad, *parts)
  assert "0_tbptt/meta_loss" in metrics and "masked_tasks" in metrics
  with pytest.raises(ValueError):
    combined.combined(estimators=[])


def test_invalid_es_configuration_rejected():
  with pytest.raises(ValueError, match="constant"):
    es.es(full_horizon=True, schedule="log_uniform")
  with pytest.raises(ValueError, match="num_pairs"):
    es.es(num_pairs=0)
  with pytest.raises(ValueError, match="schedule"):
    tbptt.tbptt(schedule="forever")


def test_estimator_gin_files_build(clean_gin):
  import glob  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel

  import gin  # pylint: disable=import-outside-toplevel

  from lopt import config  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  paths = sorted(glob.glob(os.path.join(root, "gin_configs", "estimators", "*.gin")))
  assert len(paths) >= 4
  for path in paths:
    gin.clear_config()
    config.parse([path])
    estimator = gin.query_parameter("meta_train.estimator").scoped_configurable_fn()
    # Each file configures the estimator it is named after (es_full.gin: es with full_horizon).
    assert estimator.name == os.path.basename(path).split(".")[0].split("_")[0], path


@pytest.mark.slow  # two meta_train compilations: ~20-40 s on 2 cores
@pytest.mark.parametrize("make", [
    lambda: combined.combined(estimators=[tbptt.tbptt(num_tasks=2, truncation_length=5, horizon=10),
                                          es.es(num_tasks=2, num_pairs=2, truncation_length=5, horizon=10)]),
], ids=["combined_tbptt_es"])
def test_meta_train_checkpoints_and_resumes_with_estimator(make, tmp_path):
  from lopt.architectures import ff  # pylint: disable=import-outside-toplevel
  from lopt.meta_trainers import outer_loop  # pylint: disable=import-outside-toplevel
  from lopt.tasks import fixed  # pylint: disable=import-outside-toplevel

  def run(num_steps):
    return outer_loop.meta_train(task_sampler=fixed(quadratic(dim=3)), architecture=ff.ff(hidden_sizes=(4,)),
                                 estimator=make(), num_outer_steps=num_steps, workdir=str(tmp_path),
                                 wandb_mode="disabled", log_every=1, checkpoint_every=1)

  run(1)
  result = run(2)  # resumes the (tuple) estimator state from the checkpoint
  assert result.step == 2 and "masked_tasks" in result.metrics
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(result.theta))
