"""Small networks the architectures are built from: an MLP over the last axis and an LSTM cell.

Plain functions over dicts of arrays (no module framework), so theta is an ordinary pytree that estimators can
perturb and ``vmap`` over.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from lopt.types import PRNGKey

Layer = dict[str, jax.Array]


def init_mlp(key: PRNGKey, sizes: Sequence[int], output_init_scale: float) -> list[Layer]:
  """He-initialised hidden layers; the output layer is scaled by ``output_init_scale`` (near zero, so that an
  untrained optimizer is its nominal rule)."""
  layers = []
  keys = jax.random.split(key, len(sizes) - 1)
  for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
    last = i == len(sizes) - 2
    scale = output_init_scale if last else jnp.sqrt(2.0 / n_in)
    layers.append({"w": jax.random.normal(k, (n_in, n_out), jnp.float32) * scale,
                   "b": jnp.zeros((n_out,), jnp.float32)})
  return layers


def apply_mlp(layers: Sequence[Layer], x: jax.Array, first_bias: jax.Array | None = None) -> jax.Array:
  """ReLU MLP over the last axis of ``x``.

  Args:
    layers: from ``init_mlp``; the first layer's ``w`` may have more rows than ``x`` has features, the extra rows
      being inputs shared by every row of ``x`` (see ``first_bias``).
    x: per-parameter inputs, ``(..., n)``.
    first_bias: a vector added to the first layer's pre-activation. Inputs that are the same for every parameter
      of a tensor (progress, loss, per-tensor context) enter here, as ``shared @ w[n:]``, instead of being
      broadcast to every parameter and multiplied there: same function, far less work.
  """
  n = x.shape[-1]
  w = layers[0]["w"]
  h = x @ w[:n] + layers[0]["b"]
  if first_bias is not None:
    h = h + first_bias
  for layer in layers[1:]:
    h = jax.nn.relu(h) @ layer["w"] + layer["b"]
  return h


def apply_mlp_t(layers: Sequence[Layer], x: jax.Array, first_bias: jax.Array | None = None) -> jax.Array:
  """``apply_mlp`` in feature-major layout: ``x`` is ``(n_features, n)`` and the result ``(n_out, n)``."""
  n = x.shape[0]
  b = layers[0]["b"] if first_bias is None else layers[0]["b"] + first_bias
  h = layers[0]["w"][:n].T @ x + b[:, None]
  for layer in layers[1:]:
    h = layer["w"].T @ jax.nn.relu(h) + layer["b"][:, None]
  return h


def shared_bias(layers: Sequence[Layer], num_per_parameter: int, shared: jax.Array) -> jax.Array:
  """The first layer's contribution of inputs shared by a whole tensor: ``shared @ w[num_per_parameter:]``."""
  return shared @ layers[0]["w"][num_per_parameter:]


def init_lstm(key: PRNGKey, num_inputs: int, hidden: int) -> Layer:
  """LSTM cell weights; the forget-gate bias starts at 1 so the memory is kept by default."""
  k1, k2 = jax.random.split(key)
  b = jnp.zeros((4 * hidden,), jnp.float32).at[hidden:2 * hidden].set(1.0)
  return {"wx": jax.random.normal(k1, (num_inputs, 4 * hidden), jnp.float32) / jnp.sqrt(num_inputs),
          "wh": jax.random.normal(k2, (hidden, 4 * hidden), jnp.float32) / jnp.sqrt(hidden), "b": b}


def lstm_step(cell: Layer, x: jax.Array, h: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One LSTM step over the last axis; leading axes (e.g. one per tensor) are batch axes."""
  gates = x @ cell["wx"] + h @ cell["wh"] + cell["b"]
  i, f, g, o = jnp.split(gates, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  return h, c
