"""Conformance suite run over every registered task family, plus the samplers built on them.

Every name in ``registry.names("task_family")`` must have an entry in ``CONFORMANCE`` (small sizes keep the suite
fast); a new family without one fails ``test_every_family_has_a_conformance_entry``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import registry
from lopt import tasks


def _small_mlp():
  return tasks.image_mlp(hidden_sizes=(16,), batch_size=32)


# name -> (factory producing a small family, Adam learning rate, largest allowed final / initial held-out loss).
# Learning rates: Adam moves each parameter by about lr per step. The quadratic and 2-D functions need their
# parameters to travel distances of order 1 in 100 steps, hence 1e-1 (Rosenbrock's curved valley still only gives
# about 0.55 in 100 steps); the networks use 1e-2 (at 1e-3 the
# small LMs and the autoencoder barely move in 100 steps, so the test could not tell training from noise).
CONFORMANCE = {
    "quadratic": (lambda: tasks.quadratic(8, min_scale=1e-2, max_scale=1e2), 1e-1, 0.5),
    "classic_2d": (lambda: tasks.classic_2d("rosenbrock"), 1e-1, 0.75),
    "image_mlp": (_small_mlp, 1e-2, 0.8),
    "image_conv": (lambda: tasks.image_conv(channels=(4, 8), batch_size=16), 1e-2, 0.9),
    "autoencoder": (lambda: tasks.autoencoder(hidden_sizes=(16, 4), batch_size=16), 1e-2, 0.8),
    "char_rnn": (lambda: tasks.char_rnn(hidden_size=16, embed_size=8, seq_len=8, batch_size=8), 1e-2, 0.8),
    "transformer_lm": (lambda: tasks.transformer_lm(width=16, num_heads=2, seq_len=8, batch_size=8), 1e-2, 0.8),
    "reparametrize": (lambda: tasks.reparametrize(_small_mlp(), min_scale=0.3, max_scale=3.0), 1e-2, 0.8),
    "reduced_batch": (lambda: tasks.reduced_batch(_small_mlp(), batch_size=8), 1e-2, 0.9),
    "bfloat16": (lambda: tasks.bfloat16(_small_mlp()), 1e-2, 0.8),
    # Structure-polymorphic families: every task of the batch has its own structure.
    "mlp_structures": (lambda: tasks.mlp_structures(widths=(8, 16), max_depth=2), 1e-2, 0.8),
    "autoencoder_structures": (lambda: tasks.autoencoder_structures(widths=(8, 16), max_depth=2,
                                                                    input_sizes=(32, 64)), 1e-2, 0.9),
    "quadratic_structures": (lambda: tasks.quadratic_structures(max_dim=16), 1e-1, 0.6),
}


# Primitives that lower to LAPACK custom calls on the CPU. jaxlib runs a batched one by fanning it out over the XLA
# thread pool it already runs on and waiting: a few at once deadlock a small pool (see lopt/tasks/char_rnn.py), so
# nothing a meta-trainer jits per task (init, loss, gradient) may contain one.
LAPACK_PRIMITIVES = frozenset({"qr", "householder_product", "geqrf", "geqp3", "orgqr", "eigh", "eig", "svd", "lu",
                               "lu_pivots_to_permutation", "cholesky", "schur", "hessenberg", "tridiagonal",
                               "tridiagonal_solve"})


def primitive_names(jaxpr, found: set[str] | None = None) -> set[str]:
  """Names of every primitive in ``jaxpr`` and the jaxprs nested in its equations (scan, cond, jit, ...)."""
  found = set() if found is None else found
  for eqn in jaxpr.eqns:
    found.add(eqn.primitive.name)
    for param in eqn.params.values():
      for value in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(value, "jaxpr", value)
        if hasattr(inner, "eqns"):
          primitive_names(inner, found)
  return found


def trees_equal(a, b) -> bool:
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_every_family_has_a_conformance_entry():
  assert set(registry.names("task_family")) == set(CONFORMANCE)
  for name in CONFORMANCE:
    assert registry.describe("task_family", name)


@pytest.mark.parametrize("name", sorted(CONFORMANCE))
def test_family_conformance(name):
  # One compiled program per family (initial losses of a vmapped batch of tasks, one task alone, and a training
  # run) keeps the suite fast: compilation dominates on CPU.
  make, learning_rate, max_ratio = CONFORMANCE[name]
  family = make()
  assert isinstance(family, tasks.TaskFamily) and family.name
  tx = optax.adam(learning_rate)

  def initial(cfg, key):
    task = family.task(cfg)
    loss = task.loss(task.init(key), key, task.batch(key, "train"))
    return loss, task.normalize(loss)

  @jax.jit
  def run(cfgs, keys, index):
    cfg, key = jax.tree.map(lambda leaf: leaf[index], cfgs), keys[index]
    task = family.task(cfg)
    eval_key, train_key = jax.random.split(jax.random.fold_in(key, 1))
    start = task.init(key)
    value, grads = jax.value_and_grad(task.loss)(start, key, task.batch(key, "train"))

    def step(carry, step_key):
      params, opt_state = carry
      grads = jax.grad(task.loss)(params, step_key, task.batch(step_key, "train"))
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    (trained, _), _ = jax.lax.scan(step, (start, tx.init(start)), jax.random.split(train_key, 100))
    held_out = lambda p: jnp.mean(jax.vmap(lambda k: task.loss(p, k, task.batch(k, "outer_valid")))(
        jax.random.split(eval_key, 4)))
    return {"params": start, "loss": value, "grads": grads, "before": held_out(start),
            "after": held_out(trained), "batches": {s: task.batch(key, s) for s in tasks.SPLITS},
            "vmapped": jax.vmap(initial)(cfgs, keys)}

  # Deterministic given a key: configurations (drawn eagerly, so no hidden state), parameters and batches.
  cfg = family.sample(jax.random.key(3))
  assert trees_equal(cfg, family.sample(jax.random.key(3)))
  assert not trees_equal(cfg, family.sample(jax.random.key(4)))
  with pytest.raises(ValueError, match="outer_valid"):
    family.task(cfg).batch(jax.random.key(0), "valid")
  keys = jax.random.split(jax.random.key(7), 16)
  cfgs = jax.vmap(family.sample)(keys)
  out = run(cfgs, keys, 2)
  again = run(cfgs, keys, 2)
  other = run(cfgs, keys, 3)
  assert trees_equal(out["params"], again["params"]) and trees_equal(out["batches"], again["batches"])
  assert not trees_equal(out["params"], other["params"])

  # Loss and gradient are finite, and the gradient is not identically zero.
  assert out["loss"].shape == () and np.isfinite(out["loss"])
  assert jax.tree.structure(out["grads"]) == jax.tree.structure(out["params"])
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(out["grads"]))
  assert any(np.any(g != 0) for g in jax.tree.leaves(out["grads"]))

  # vmap over sampled configurations agrees with one task at a time; the normaliser puts fresh tasks near 1.
  losses, normalized = out["vmapped"]
  assert losses.shape == (16,)
  assert len(np.unique(np.asarray(losses))) > 1  # Sampled tasks differ.
  np.testing.assert_allclose(losses[2], out["loss"], rtol=2e-2 if name == "bfloat16" else 1e-4)
  normalized = np.asarray(normalized)
  assert np.all(np.isfinite(normalized))
  assert 0.2 <= np.median(normalized) <= 5.0
  assert 0.3 <= normalized.mean() <= 3.0

  # optax.adam lowers the held-out loss within 100 steps.
  assert np.isfinite(out["after"]) and out["after"] < max_ratio * out["before"], (out["before"], out["after"])


@pytest.mark.parametrize("name", sorted(CONFORMANCE))
def test_family_has_no_lapack_call(name):
  family = CONFORMANCE[name][0]()

  def init_and_grad(key):
    task = family.task(family.sample(key))
    params = task.init(key)
    return jax.grad(task.loss)(params, key, task.batch(key, "train"))

  jaxpr = jax.make_jaxpr(jax.vmap(init_and_grad))(jax.random.split(jax.random.key(0), 4)).jaxpr
  names = primitive_names(jaxpr)
  assert "dot_general" in names or "mul" in names  # The walk saw the computation.
  assert not names & LAPACK_PRIMITIVES, sorted(names & LAPACK_PRIMITIVES)


def test_lapack_guard_sees_qr():
  jaxpr = jax.make_jaxpr(jax.vmap(lambda k: jax.nn.initializers.orthogonal()(k, (4, 4))))(
      jax.random.split(jax.random.key(0), 2)).jaxpr
  assert "qr" in primitive_names(jaxpr) or "householder_product" in primitive_names(jaxpr)
