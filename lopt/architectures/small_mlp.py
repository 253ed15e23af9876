"""A per-parameter MLP of a few units written as elementwise arithmetic.

For hidden layers of width <= ~8, a matrix multiply over millions of rows with 3-8 columns is memory-bound and
materialises every intermediate. Written as sums of scalar-times-array terms instead, XLA fuses the whole network
(and the features feeding it) into one loop over the parameters, which is what keeps ``ff_small`` and
``lstm_hyper`` within a small factor of Adam.

Differentiating that form is another matter. Autodiff transposes every scalar-times-array term separately (each
weight's gradient its own reduction over the parameters), and XLA then fuses the whole elementwise network into
each consumer of the backward pass, recomputing it several times per tensor: the gradient of one ``ff`` update on
the 6.5k-parameter digits MLP compiled to 47k HLO lines and ran 19x longer than the update (7.2 ms; 10.7k lines and
0.5 ms with the form below, on a loaded 2-core CPU). ``apply_small_mlp`` therefore
has a custom JVP that evaluates the same network as matrix multiplies over the stacked features (``(n, size)``):
the products are materialised once, and the backward pass is a few matrix multiplies per layer. The function
called without differentiation (plain stepping, ES and PES) is the fused elementwise form, bit for bit; under
differentiation the primal is the matmul form, equal up to float32 rounding of the summation order.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

# Keep the matmul form's contractions in full float32 on accelerators too (their default may be TF32/bf16).
_PRECISION = jax.lax.Precision.HIGHEST


def _elementwise(layers, inputs, first_bias) -> list[jax.Array]:
  """The MLP as sums of scalar-times-array terms (fused by XLA into one loop over the parameters)."""
  h = list(inputs)
  for index, layer in enumerate(layers):
    w, b = layer["w"], layer["b"]
    if index == 0 and first_bias is not None:
      b = b + first_bias
    if index > 0:
      h = [jax.nn.relu(x) for x in h]
    h = [sum((h[i] * w[i, j] for i in range(len(h))), jnp.zeros_like(h[0])) + b[j] for j in range(w.shape[1])]
  return h


def _stacked(layers, inputs, first_bias) -> list[jax.Array]:
  """The same MLP as matrix products over the features stacked into ``(n, size)``."""
  shape = inputs[0].shape
  h = jnp.stack([x.reshape(-1) for x in inputs])
  for index, layer in enumerate(layers):
    w, b = layer["w"], layer["b"]
    if index == 0:
      w = w[:len(inputs)]  # extra rows belong to shared inputs, which first_bias carries.
      if first_bias is not None:
        b = b + first_bias
    else:
      h = jax.nn.relu(h)
    h = jnp.matmul(w.T, h, precision=_PRECISION) + b[:, None]
  return [row.reshape(shape) for row in h]


@jax.custom_jvp
def _apply(layers, inputs, first_bias):
  return _elementwise(layers, inputs, first_bias)


@_apply.defjvp
def _apply_jvp(primals, tangents):
  return jax.jvp(_stacked, primals, tangents)


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
  return _apply(list(layers), list(inputs), first_bias)
