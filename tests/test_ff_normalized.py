"""``ff(normalize_update=True)``: every tensor's update has RMS exp(log_step), whatever its gradients' scale."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.architectures import ff
from lopt.arguments import ArgumentError


def _updates(arch, grads, params, steps=3):
  theta = arch.init(jax.random.key(0))
  tx = arch.optimizer(theta, num_steps=10)
  state = tx.init(params)
  for _ in range(steps):
    updates, state = tx.update(grads, state, params, loss=jnp.float32(1.0))
  return updates


@pytest.mark.parametrize("evaluation", ["elementwise", "matmul"])
def test_each_tensor_moves_by_the_step_size(evaluation):
  key = jax.random.key(1)
  params = {"w": jax.random.normal(key, (5, 7)), "b": jnp.zeros(7), "tiny": jnp.ones(3)}
  # Gradients 6 orders of magnitude apart across tensors, with spread inside each.
  grads = {"w": 1e3 * jax.random.normal(jax.random.key(2), (5, 7)), "b": 1e-3 * jnp.linspace(-1, 2, 7),
           "tiny": jnp.array([1e-3, 0.0, 2e-3])}
  arch = ff.ff(hidden_sizes=(4,), initial_step=1e-2, output_init_scale=0.3, normalize_update=True,
               evaluation=evaluation, chunk_size=8)
  updates = _updates(arch, grads, params)
  for name, u in updates.items():
    np.testing.assert_allclose(float(jnp.sqrt(jnp.mean(jnp.square(u)))), 1e-2, rtol=1e-4, err_msg=name)
  plain = _updates(ff.ff(hidden_sizes=(4,), initial_step=1e-2, output_init_scale=0.3, evaluation=evaluation,
                         chunk_size=8), grads, params)
  # Normalising keeps each tensor's direction (a positive rescaling of the plain update).
  for name in updates:
    ratio = np.asarray(updates[name]) / np.where(np.asarray(plain[name]) == 0, np.nan, np.asarray(plain[name]))
    finite = ratio[np.isfinite(ratio)]
    assert np.all(finite > 0) and np.ptp(finite) < 1e-3 * np.max(finite), name


def test_zero_gradient_gives_a_finite_zero_update_and_bad_flag_is_named():
  params = {"w": jnp.ones((2, 3))}
  updates = _updates(ff.ff(hidden_sizes=(4,), normalize_update=True), {"w": jnp.zeros((2, 3))}, params)
  assert np.all(np.isfinite(np.asarray(updates["w"])))
  with pytest.raises(ArgumentError, match="architectures.ff.normalize_update"):
    ff.ff(normalize_update="yes")
