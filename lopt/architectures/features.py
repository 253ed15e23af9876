"""Input features of learned optimizers, computed per parameter and normalised per tensor.

Kept separate from any one architecture so that ``ff``, ``per_tensor`` and ``lstm_hyper`` share one definition.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

DEFAULT_DECAYS: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
DEFAULT_TIMESCALES: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def update_moments(momenta: jax.Array, rms: jax.Array, grad: jax.Array, decays: jax.Array,
                   rms_decay: float) -> tuple[jax.Array, jax.Array]:
  """Exponential moving averages of the gradient (one per decay, stacked first) and of its square."""
  decays = decays.reshape((-1,) + (1,) * grad.ndim)
  momenta = decays * momenta + (1.0 - decays) * grad[None]
  rms = rms_decay * rms + (1.0 - rms_decay) * jnp.square(grad)
  return momenta, rms


def tensor_normalize(x: jax.Array, axes: Sequence[int], eps: float = 1e-8) -> jax.Array:
  """Divides ``x`` by its root-mean-square over ``axes`` (the parameter axes of one tensor)."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=tuple(axes), keepdims=True) + eps)


def progress_features(step: jax.Array, num_steps: jax.Array | int,
                      timescales: Sequence[float] = DEFAULT_TIMESCALES) -> jax.Array:
  """Training-progress embedding: the fraction of ``num_steps`` done and ``tanh(step / timescale)``."""
  step = jnp.asarray(step, jnp.float32)
  frac = step / jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
  scales = jnp.asarray(timescales, jnp.float32)
  return jnp.concatenate([jnp.stack([frac, 1.0 - frac]), jnp.tanh(step / scales)])


def per_parameter_features(param: jax.Array, grad: jax.Array, momenta: jax.Array, rms: jax.Array,
                           eps: float = 1e-8) -> jax.Array:
  """Per-tensor-normalised features of one tensor, shape ``(*param.shape, num_features)``.

  Features: parameter, gradient, each momentum, 1/sqrt(rms) and each momentum divided by sqrt(rms). Each is
  normalised by its RMS over the tensor so the network sees the same scale whatever the tensor's scale.
  """
  inv_rms = jax.lax.rsqrt(rms + eps)
  raw = [param, grad, *momenta, inv_rms, *(momenta * inv_rms[None])]
  stacked = jnp.stack([x.astype(jnp.float32) for x in raw], axis=-1)
  return tensor_normalize(stacked, axes=range(param.ndim))


def num_per_parameter_features(num_decays: int) -> int:
  """Length of the last axis of ``per_parameter_features``."""
  return 3 + 2 * num_decays
