"""Architectures that read the loss (``per_tensor``, ``lstm_hyper``) or the validation loss (``per_tensor``) change
their update when it changes; ``ff`` and ``ff_small`` ignore both (as their docstring says).

Each optimizer takes two steps with losses 1 and 0.8 (loss features compare a loss with the earlier ones; VeLO's are
zero for the first two losses), then the same third step is taken with a low and a high loss: the updates must
differ for a reader and be equal otherwise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.registry import lookup

PARAMS = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
GRADS = {"w": jnp.full((4, 3), 0.1), "b": jnp.full(3, -0.2)}


def _second_updates(name, low, high, key):
  """The flattened third update with ``key`` (``loss`` or ``valid_loss``) set to ``low`` and to ``high``."""
  arch = lookup("architecture", name)()
  # Non-zero output heads, so that every input reaches the update.
  theta = jax.tree.map(lambda x: x + 0.1, arch.init(jax.random.key(0)))

  @jax.jit
  def run(values):
    tx = arch.optimizer(theta, num_steps=10)
    one = jnp.float32(1.0)
    state = tx.init(PARAMS)
    for earlier in (1.0, 0.8):
      _, state = tx.update(GRADS, state, PARAMS, loss=jnp.float32(earlier), valid_loss=jnp.float32(earlier))
    second = lambda v: jax.flatten_util.ravel_pytree(
        tx.update(GRADS, state, PARAMS, **{"loss": one, "valid_loss": one, key: v})[0])[0]
    return jax.vmap(second)(values)

  return np.asarray(run(jnp.asarray([low, high], jnp.float32)))


@pytest.mark.parametrize("name", ["per_tensor", "lstm_hyper"])
def test_loss_readers_change_their_update_with_the_loss(name):
  low, high = _second_updates(name, 0.5, 5.0, "loss")
  assert np.all(np.isfinite(low)) and np.all(np.isfinite(high))
  assert np.max(np.abs(low - high)) > 1e-3 * np.max(np.abs(low))


def test_per_tensor_changes_its_update_with_the_valid_loss():
  assert lookup("architecture", "per_tensor")().reads_valid_loss
  low, high = _second_updates("per_tensor", 0.5, 5.0, "valid_loss")
  assert np.max(np.abs(low - high)) > 1e-3 * np.max(np.abs(low))


@pytest.mark.parametrize("name", ["ff", "ff_small"])
@pytest.mark.parametrize("key", ["loss", "valid_loss"])
def test_ff_ignores_the_loss(name, key):
  assert not lookup("architecture", name)().reads_valid_loss
  low, high = _second_updates(name, 0.5, 5.0, key)
  np.testing.assert_array_equal(low, high)
