"""A learned optimizer is plain optax: it trains a model inside ``optax.chain`` in an ordinary loop."""

import jax
import jax.numpy as jnp
import optax

from lopt.architectures import ff
from lopt.tasks import image_mlp


def test_ff_in_optax_chain_trains_an_mlp():
  family = image_mlp(hidden_sizes=(16,), batch_size=64)
  task = family.task(family.sample(jax.random.key(0)))
  params = task.init(jax.random.key(1))
  arch = ff.ff()
  num_steps = 100
  tx = optax.chain(arch.optimizer(arch.init(jax.random.key(2)), num_steps=num_steps),
                   optax.clip_by_global_norm(1.0))
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, key):
    loss, grads = jax.value_and_grad(task.loss)(params, key, task.batch(key, "train"))
    updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
    return optax.apply_updates(params, updates), opt_state, loss

  eval_batch = task.batch(jax.random.key(99), "test")
  initial = float(task.loss(params, jax.random.key(0), eval_batch))
  for step in range(num_steps):
    params, opt_state, loss = train_step(params, opt_state, jax.random.key(step))
    assert jnp.isfinite(loss)
  final = float(task.loss(params, jax.random.key(0), eval_batch))
  assert final < 0.8 * initial
  # The clip in the chain bounds every update's global norm.
  updates, _ = tx.update(jax.tree.map(lambda p: 1e6 * jnp.ones_like(p), params), opt_state, params, loss=1.0)
  assert float(optax.tree.norm(updates)) <= 1.0 + 1e-5
