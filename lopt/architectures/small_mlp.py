"""A per-parameter MLP of a few units written as elementwise arithmetic.

For hidden layers of width <= ~8, a matrix multiply over millions of rows with 3-8 columns is memory-bound and
materialises every intermediate. Written as sums of scalar-times-array terms instead, XLA fuses the whole network
(and the features feeding it) into one loop over the parameters, which is what keeps ``ff_small`` and
``lstm_hyper`` within a small factor of Adam.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def apply_small_mlp(layers: Sequence[dict[str, jax.Array]], inputs: Sequence[jax.Array],
                    first_bias: jax.Array | None = None) -> list[jax.Array]:
  """Applies a ReLU MLP to per-parameter inputs given as a list of same-shaped arrays (one per feature).

  Args:
    layers: ``[{"w": (n_in, n_out), "b": (n_out,)}, ...]``; the first ``w`` may have extra rows for shared inputs
      that ``first_bias`` already accounts for.
    inputs: ``n`` arrays of the parameter's shape.
    first_bias: optional ``(n_hidden,)`` added to the first layer (inputs shared by the whole tensor).

  Returns:
    One array per output unit.
  """
  h = list(inputs)
  for index, layer in enumerate(layers):
    w, b = layer["w"], layer["b"]
    if index == 0 and first_bias is not None:
      b = b + first_bias
    if index > 0:
      h = [jax.nn.relu(x) for x in h]
    h = [sum((h[i] * w[i, j] for i in range(len(h))), jnp.zeros_like(h[0])) + b[j] for j in range(w.shape[1])]
  return h
