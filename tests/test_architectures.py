"""Conformance of every registered architecture: each must behave as an ordinary optax transformation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt.architectures  # noqa: F401  registers every architecture.
from lopt.architectures import ff as ff_lib
from lopt import registry
from lopt.meta_trainers import unroll as unroll_lib
from lopt.tasks import quadratic

NAMES = registry.names("architecture")
NUM_STEPS = 20


def _params(dtype=jnp.float32, low=jnp.bfloat16):
  """A matrix, a vector, a scalar and a rank-3 tensor; half of them in ``low`` precision, so one compiled step
  checks that float32 and bfloat16 parameters each keep their dtype."""
  key = jax.random.key(0)
  return {"w": (0.3 * jax.random.normal(key, (6, 5))).astype(dtype), "b": jnp.zeros((5,), low),
          "s": jnp.ones([], dtype), "conv": (0.1 * jnp.ones((3, 2, 4))).astype(low)}


def _make(name):
  arch = registry.lookup("architecture", name)()
  return arch, arch.init(jax.random.key(1))


def _structure(tree):
  return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("name", NAMES)
def test_state_stable_dtypes_kept_and_extreme_gradients_finite(name):
  arch, theta = _make(name)
  params = _params()
  dtypes = jax.tree.map(lambda p: p.dtype, params)
  tx = arch.optimizer(theta, num_steps=NUM_STEPS)
  state = tx.init(params)
  before = _structure(state)
  # One compiled step serves every case below: same shapes and dtypes, only values change.
  step = jax.jit(lambda p, s, g: tx.update(g, s, p, loss=jnp.float32(1.0)))
  for i in range(3):
    grads = jax.tree.map(lambda p: (0.1 * (i + 1) * jnp.ones_like(p)).astype(p.dtype), params)
    updates, state = step(params, state, grads)
    assert _structure(state) == before
    params = optax.apply_updates(params, updates)
  assert jax.tree.map(lambda u: u.dtype, updates) == dtypes
  assert jax.tree.map(lambda p: p.dtype, params) == dtypes
  for scale in (0.0, 1e-30, 1e30):
    fresh = tx.init(params)
    for sign in (1.0, -1.0, 1.0):
      grads = jax.tree.map(lambda p: (sign * scale * jnp.ones(p.shape)).astype(p.dtype), params)
      updates, fresh = step(params, fresh, grads)
      for u in jax.tree.leaves(updates):
        assert np.all(np.isfinite(np.asarray(u, np.float32))), (name, scale)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_theta_and_chain(name):
  arch, _ = _make(name)
  thetas = jax.vmap(arch.init)(jax.random.split(jax.random.key(2), 3))
  params = _params()
  grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)

  def one(theta):
    tx = optax.chain(optax.clip_by_global_norm(1.0), arch.optimizer(theta, num_steps=NUM_STEPS),
                     optax.scale(1.0))
    updates, _ = tx.update(grads, tx.init(params), params, loss=jnp.float32(1.0))
    return updates

  updates = jax.jit(jax.vmap(one, axis_size=3))(thetas)  # axis_size: theta may be empty
  for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
    assert u.shape == (3,) + p.shape and np.all(np.isfinite(np.asarray(u)))


@pytest.mark.parametrize("name", NAMES)
def test_meta_gradient_finite_and_untrained_optimizer_makes_progress(name):
  arch, theta = _make(name)
  family = quadratic(dim=4)
  state = unroll_lib.init_task_state(theta, jax.random.key(3), 40, task_family=family, learned_optimizer=arch)

  def meta_loss(th, num_steps):
    _, losses = unroll_lib.unroll(th, state, jax.random.key(4), num_steps, task_family=family,
                                  learned_optimizer=arch)
    return jnp.mean(losses), losses

  # One compiled unroll checks both: the meta-gradient through 40 steps is finite, and learned optimizers start
  # as a working optimizer (40 untrained steps reduce the loss).
  (value, losses), grad = jax.jit(jax.value_and_grad(lambda th: meta_loss(th, 40), has_aux=True))(theta)
  assert np.isfinite(float(value))
  for g in jax.tree.leaves(grad):
    assert np.all(np.isfinite(np.asarray(g))), name
  assert float(losses[-1]) < float(losses[0])


def test_valid_loss_is_optional_for_per_tensor():
  arch, theta = _make("per_tensor")
  params = _params()
  tx = arch.optimizer(theta, num_steps=NUM_STEPS)
  grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
  state = tx.init(params)
  without, s1 = tx.update(grads, state, params, loss=jnp.float32(2.0))
  with_valid, s2 = tx.update(grads, state, params, loss=jnp.float32(2.0), valid_loss=jnp.float32(3.0))
  assert _structure(s1) == _structure(s2)
  assert float(s2.valid_loss["seen"]) == 1.0 and float(s1.valid_loss["seen"]) == 0.0
  for a in jax.tree.leaves(with_valid):
    assert np.all(np.isfinite(np.asarray(a)))


def _ff_updates(arch, grads_list, params):
  tx = arch.optimizer(arch.init(jax.random.key(1)), num_steps=NUM_STEPS)
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: tx.update(g, s, p))
  for grads in grads_list:
    updates, state = step(params, state, grads)
  return updates


def _random_grads(params, num_steps, scale=1.0):
  keys = jax.random.split(jax.random.key(7), num_steps)
  return [jax.tree.map(lambda p: (scale * jax.random.normal(k, p.shape)).astype(jnp.float32), params)
          for k in keys]


def test_ff_elementwise_and_chunked_matmul_evaluations_agree():
  # The two ways of evaluating ff's per-parameter MLP compute one function; a chunk size of 7 makes the matmul
  # form pad and loop over chunks of the 30- and 24-element tensors.
  params = _params(low=jnp.float32)
  grads = _random_grads(params, 3)
  fused = _ff_updates(ff_lib.ff(hidden_sizes=(8, 8), evaluation="elementwise", output_init_scale=0.3), grads,
                      params)
  chunked = _ff_updates(ff_lib.ff(hidden_sizes=(8, 8), evaluation="matmul", chunk_size=7, output_init_scale=0.3),
                        grads, params)
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(chunked)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-9)
  with pytest.raises(ValueError, match="evaluation"):
    ff_lib.ff(evaluation="loop")


def test_ff_elementwise_gradients_match_autodiff_of_the_matmul_evaluation():
  # The elementwise MLP's backward pass is its own (custom JVP over stacked features); it must agree with plain
  # autodiff through the matmul evaluation, for theta and for the inputs an unroll differentiates through.
  params = _params(low=jnp.float32)
  grads = _random_grads(params, 1)[0]

  kw = dict(hidden_sizes=(8, 8), output_init_scale=0.3)
  fused, matmul = ff_lib.ff(**kw, evaluation="elementwise"), ff_lib.ff(**kw, evaluation="matmul")
  theta = fused.init(jax.random.key(1))
  tx = fused.optimizer(theta, num_steps=NUM_STEPS)
  state = jax.jit(tx.update)(grads, tx.init(params), params)[1]  # momenta and rms no longer all equal

  def loss(arch, theta, g, p):
    updates, _ = arch.optimizer(theta, num_steps=NUM_STEPS).update(g, state, p)
    return sum(jnp.sum(jnp.sin(1e3 * u) * (i + 1)) for i, u in enumerate(jax.tree.leaves(updates)))

  g2 = jax.tree.map(lambda x: -0.5 * x, grads)
  a = jax.jit(jax.grad(lambda *xs: loss(fused, *xs), argnums=(0, 1, 2)))(theta, g2, params)
  b = jax.jit(jax.grad(lambda *xs: loss(matmul, *xs), argnums=(0, 1, 2)))(theta, g2, params)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    scale = float(np.max(np.abs(np.asarray(y)))) + 1e-30
    np.testing.assert_allclose(np.asarray(x) / scale, np.asarray(y) / scale, rtol=0, atol=1e-4)
  assert float(np.max(np.abs(np.asarray(a[0]["mlp"][0]["w"])))) > 0  # the check is not vacuous


def test_ff_is_invariant_to_the_gradient_scale():
  # Its inputs are normalised per tensor and its nominal step is Adam's, so multiplying every gradient by 1000
  # leaves the update unchanged (up to epsilon), with an MLP far from its near-zero initial output layer.
  params = _params(low=jnp.float32)
  arch = ff_lib.ff(output_init_scale=0.3)
  small = _ff_updates(arch, _random_grads(params, 3, scale=1.0), params)
  large = _ff_updates(arch, _random_grads(params, 3, scale=1e3), params)
  for a, b in zip(jax.tree.leaves(small), jax.tree.leaves(large)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-9)


# --- lstm_hyper (VeLO) ------------------------------------------------------------------------------------------


def test_lstm_hyper_sampled_normalisers_match_exact_ones():
  # A 300x200 matrix is summarised from a 4,096-entry strided sample; every normaliser must stay within 10% of the
  # exact per-tensor value (sample_size larger than the tensor computes it exactly).
  from lopt.architectures import velo_features
  keys = jax.random.split(jax.random.key(5), 4)
  shape = (300, 200)
  g = jax.random.normal(keys[0], shape) * jnp.linspace(0.1, 3.0, shape[1])  # column-structured scale
  p = jax.random.normal(keys[1], shape)
  moms = [0.5 * g + 0.1 * jax.random.normal(k, shape) for k in jax.random.split(keys[2], 3)]
  v = jnp.square(g) + 0.01
  rows = jnp.stack([jnp.mean(v, axis=-1)] * 3)
  cols = jnp.stack([jnp.mean(v, axis=-2)] * 3)
  feats, sampled = velo_features.parameter_features(p, g, moms, v, rows, cols)
  _, exact = velo_features.parameter_features(p, g, moms, v, rows, cols, sample_size=10**9)
  assert len(feats) == velo_features.num_parameter_features(3, 3) == sampled.shape[0]
  np.testing.assert_allclose(np.asarray(sampled), np.asarray(exact), rtol=0.1)
  assert velo_features.SAMPLE_SIZE // 2 <= velo_features.sample_indices((300, 200)).size <= velo_features.SAMPLE_SIZE
  assert velo_features.sample_indices((60, 60)) is None


def test_lstm_hyper_global_context_couples_tensors():
  # VeLO's global context: changing one tensor's gradient changes another tensor's update (through the max-pooled
  # projection of every tensor's LSTM input). Heads are made non-negligible so the effect is measurable.
  from lopt.architectures import lstm_hyper as lstm_hyper_lib
  arch = lstm_hyper_lib.lstm_hyper(output_init_scale=0.3)
  theta = arch.init(jax.random.key(1))
  params = {"a": jnp.ones((4, 3)), "b": jnp.linspace(-1.0, 1.0, 5)}
  tx = arch.optimizer(theta, num_steps=NUM_STEPS)
  grads = {"a": 0.1 * jnp.ones((4, 3)), "b": jnp.linspace(0.5, -0.5, 5)}
  base, _ = tx.update(grads, tx.init(params), params, loss=jnp.float32(1.0))
  changed, _ = tx.update({**grads, "a": 100.0 * grads["a"]}, tx.init(params), params, loss=jnp.float32(1.0))
  assert float(jnp.max(jnp.abs(base["b"] - changed["b"]))) > 1e-6


def test_lstm_hyper_presets_and_argument_errors():
  from lopt.arguments import ArgumentError
  from lopt.architectures import lstm_hyper as lstm_hyper_lib
  small = lstm_hyper_lib.lstm_hyper().num_meta_parameters()
  wider = lstm_hyper_lib.lstm_hyper(num_weight_sets=16).num_meta_parameters()
  assert wider > small
  for kwargs, name in (({"preset": "huge"}, "preset"), ({"num_weight_sets": 0}, "num_weight_sets"),
                       ({"mlp_hidden": 1}, "mlp_hidden"), ({"momentum_decays": (0.9, 1.0)}, "momentum_decays"),
                       ({"initial_step": 0.0}, "initial_step"), ({"lstm_hidden": 8.0}, "lstm_hidden")):
    with pytest.raises(ArgumentError, match=f"architectures.lstm_hyper.{name}"):
      lstm_hyper_lib.lstm_hyper(**kwargs)
