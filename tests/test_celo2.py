"""``celo2``: its update against a NumPy reference written from the paper's definitions, the harness's routing,
the schedule, the Newton-Schulz step and the untrained (``init="momentum"``) rule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.architectures import celo2 as celo2_lib
from lopt.arguments import ArgumentError

M_DECAYS, RMS_DECAY, F_DECAYS = (0.9, 0.99, 0.999), 0.95, (0.9, 0.99, 0.999)


def _norm(x, matrix):
  axes = (-2, -1) if matrix else None
  return x / np.sqrt(np.mean(x**2, axis=axes, keepdims=matrix) + 1e-9)


def _newton_schulz(x):
  a, b, c = 3.4445, -4.7750, 2.0315  # Muon's quintic coefficients, as Celo2 publishes them
  tall = x.shape[0] > x.shape[1]
  x = x.T if tall else x
  x = x / (np.linalg.norm(x) + 1e-8)
  for _ in range(5):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if tall else x


class Reference:
  """Celo2's update for one tensor in float64 NumPy, from the definitions (no lopt code)."""

  def __init__(self, shape):
    self.matrix = len(shape) == 2
    self.m = [np.zeros(shape) for _ in M_DECAYS]
    self.v = np.zeros(shape)
    if self.matrix:
      self.row = [np.zeros(shape[0]) for _ in F_DECAYS]
      self.col = [np.zeros(shape[1]) for _ in F_DECAYS]
    else:
      self.full = [np.zeros(shape) for _ in F_DECAYS]

  def step(self, layers, p, g, orthogonalize):
    g = np.clip(g, -1000.0, 1000.0)
    self.m = [d * m + (1 - d) * g for d, m in zip(M_DECAYS, self.m)]
    self.v = RMS_DECAY * self.v + (1 - RMS_DECAY) * g**2
    rsqrt = 1 / np.sqrt(self.v + 1e-8)
    g2 = g**2 + 1e-30
    feats = [g, np.clip(g, -0.1, 0.1), p, *self.m, self.v, *(m * rsqrt for m in self.m), rsqrt]
    if self.matrix:
      self.row = [d * r + (1 - d) * g2.mean(axis=1) for d, r in zip(F_DECAYS, self.row)]
      self.col = [d * c + (1 - d) * g2.mean(axis=0) for d, c in zip(F_DECAYS, self.col)]
      factors = [np.outer(1 / np.sqrt(np.maximum(r / (r.mean() + 1e-9), 1e-9)), 1 / np.sqrt(np.maximum(c, 1e-9)))
                 for r, c in zip(self.row, self.col)]
      feats += [g * f for f in factors] + [g * rsqrt]
      rows = [np.broadcast_to(r[:, None], g.shape) for r in self.row]
      cols = [np.broadcast_to(c[None, :], g.shape) for c in self.col]
      feats += rows + cols + [1 / np.sqrt(r + 1e-8) for r in rows] + [1 / np.sqrt(c + 1e-8) for c in cols]
      feats += [m * f for m, f in zip(self.m, factors)]
    else:
      self.full = [d * f + (1 - d) * g2 for d, f in zip(F_DECAYS, self.full)]
      feats += [g / np.sqrt(np.maximum(f + 1e-9, 1e-9)) for f in self.full] + [g * rsqrt]
    x = np.stack([_norm(f, self.matrix) for f in feats], axis=-1)
    h = x
    for i, layer in enumerate(layers):
      w, b = np.asarray(layer["w"], np.float64), np.asarray(layer["b"], np.float64)
      h = (np.maximum(h, 0) if i else h) @ w[:h.shape[-1]] + b
    d = h[..., 0]
    if orthogonalize and self.matrix:
      d = _newton_schulz(d)
    return _norm(d, self.matrix)


@pytest.mark.parametrize("orthogonalize", [True, False])
def test_update_matches_numpy_reference(orthogonalize):
  arch = celo2_lib.celo2(init="random", vectors="learned", orthogonalize=orthogonalize)
  theta = arch.init(jax.random.key(3))
  params = {"w": jax.random.normal(jax.random.key(0), (5, 3)), "b": jax.random.normal(jax.random.key(1), (4,))}
  tx = celo2_lib.scale_by_celo2(theta, orthogonalize=orthogonalize)
  state = tx.init(params)
  refs = {k: Reference(v.shape) for k, v in params.items()}
  for step in range(3):
    grads = jax.tree.map(lambda p, s=step: jax.random.normal(jax.random.key(10 + s), p.shape) * 10.0**(s - 1),
                         params)
    out, state = jax.jit(tx.update)(grads, state, params)
    for k in params:
      want = refs[k].step(theta["mlp"], np.asarray(params[k], np.float64), np.asarray(grads[k], np.float64),
                          orthogonalize)
      np.testing.assert_allclose(out[k], want, rtol=2e-3, atol=2e-4, err_msg=f"{k} at step {step}")
    params = jax.tree.map(lambda p, u: p - 0.1 * u, params, out)


def test_every_tensor_step_has_rms_one_and_matrices_are_near_orthogonal():
  theta = celo2_lib.celo2(init="random").init(jax.random.key(0))
  params = {"w": jnp.ones((16, 8)), "conv": jnp.ones((3, 3, 4, 6)), "b": jnp.ones((8,))}
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  tx = celo2_lib.scale_by_celo2(theta)
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for k, u in out.items():
    axes = (-2, -1) if u.ndim >= 2 else None
    np.testing.assert_allclose(jnp.sqrt(jnp.mean(jnp.square(u), axis=axes)), 1.0, rtol=1e-3, err_msg=k)
  singular = np.linalg.svd(np.asarray(out["w"]), compute_uv=False)
  assert singular.max() / singular.min() < 2.0  # orthogonalised: a near-flat spectrum


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (2, 5, 3)])
def test_newton_schulz_flattens_the_spectrum(shape):
  x = jax.random.normal(jax.random.key(0), shape) * jnp.linspace(0.1, 10.0, shape[-1])
  y = celo2_lib.newton_schulz(x)
  assert y.shape == x.shape
  singular = np.linalg.svd(np.asarray(y), compute_uv=False)
  assert singular.min() > 0.5 and singular.max() < 1.3
  with pytest.raises(ValueError, match="matrix"):
    celo2_lib.newton_schulz(jnp.ones(3))


def test_untrained_rule_is_the_orthogonalised_momentum_direction():
  arch = celo2_lib.celo2()  # init="momentum"
  theta = arch.init(jax.random.key(0))
  params = {"w": jax.random.normal(jax.random.key(1), (12, 7))}
  grads = {"w": jax.random.normal(jax.random.key(2), (12, 7))}
  tx = celo2_lib.scale_by_celo2(theta, orthogonalize=False)
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  # After one step m = 0.1 g and rms = 0.05 g^2: the pass-through input is proportional to sign(g).
  want = np.sign(np.asarray(grads["w"]))
  cosine = np.sum(out["w"] * want) / np.linalg.norm(out["w"]) / np.linalg.norm(want)
  assert cosine > 0.99


def test_harness_routes_matrices_to_the_learned_rule_and_the_rest_to_adamw():
  arch = celo2_lib.celo2(learning_rate=1e-2, schedule="constant")
  theta = arch.init(jax.random.key(0))
  params = {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones((3,))},
            "Embed_0": {"embedding": jnp.ones((10, 4))}, "scale": jnp.ones(())}
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  labels = celo2_lib.route(params, "adamw")
  assert labels == {"Dense_0": {"kernel": "learned", "bias": "adamw"}, "Embed_0": {"embedding": "adamw"},
                    "scale": "adamw"}
  assert set(jax.tree.leaves(celo2_lib.route(params, "learned"))) == {"learned"}
  tx = arch.optimizer(theta, num_steps=10)
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params, loss=jnp.float32(1.0))
  learned = celo2_lib.scale_by_celo2(theta)
  direction, _ = jax.jit(learned.update)(grads, learned.init(params), params)
  np.testing.assert_allclose(out["Dense_0"]["kernel"], -1e-2 * direction["Dense_0"]["kernel"], rtol=1e-5)
  adamw = optax.adamw(1e-2, b1=0.9, b2=0.95, weight_decay=0.0)
  want, _ = jax.jit(adamw.update)(grads, adamw.init(params), params)
  for path in (("Dense_0", "bias"), ("Embed_0", "embedding"), ("scale",)):
    got, ref = out, want
    for key in path:
      got, ref = got[key], ref[key]
    np.testing.assert_allclose(got, ref, rtol=1e-6, err_msg=str(path))


def test_schedule_warmup_cosine_values_and_user_schedule():
  lr = celo2_lib.schedule_fn("warmup_cosine", 1.0, 100, warmup_fraction=0.1, final_fraction=0.01)
  np.testing.assert_allclose([lr(0), lr(4), lr(10), lr(55), lr(100), lr(200)],
                             [0.1, 0.5, 1.0, 0.01 + 0.99 * 0.5, 0.01, 0.01], rtol=1e-5)
  cosine = celo2_lib.schedule_fn("cosine", 2.0, 50)
  np.testing.assert_allclose([cosine(0), cosine(50)], [2.0, 0.02], rtol=1e-5)
  # A traced horizon (tasks of different lengths under vmap) works.
  values = jax.vmap(lambda n: celo2_lib.schedule_fn("warmup_cosine", 1.0, n)(n))(jnp.array([10, 1000]))
  np.testing.assert_allclose(values, [0.01, 0.01], rtol=1e-5)
  arch = celo2_lib.celo2(vectors="learned")
  theta = arch.init(jax.random.key(0))
  params = {"w": jnp.ones((4, 3))}
  grads = {"w": jax.random.normal(jax.random.key(1), (4, 3))}
  tx = arch.optimizer(theta, num_steps=10, schedule=lambda count: 0.5)
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert float(jnp.sqrt(jnp.mean(jnp.square(out["w"])))) == pytest.approx(0.5, rel=1e-3)
  tx = arch.optimizer(theta, num_steps=10, learning_rate=3.0)  # peak 3, warm-up: first step at 3 * 1/1
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert float(jnp.sqrt(jnp.mean(jnp.square(out["w"])))) == pytest.approx(3.0, rel=1e-3)


@pytest.mark.parametrize("bad", [dict(vectors="sgd"), dict(schedule="linear"), dict(learning_rate=0.0),
                                 dict(init="zeros"), dict(hidden_sizes=()), dict(ns_steps=0)])
def test_bad_arguments_name_the_binding(bad):
  with pytest.raises(ArgumentError, match="architectures.celo2"):
    celo2_lib.celo2(**bad)
