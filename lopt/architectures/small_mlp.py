"""A per-parameter MLP of a few units written as elementwise arithmetic.

For hidden layers of width <= ~8, a matrix multiply over millions of rows with 3-8 columns is memory-bound and
materialises every intermediate. Written as sums of scalar-times-array terms instead, XLA fuses the whole network
(and the features feeding it) into one loop over the parameters, which is what keeps ``ff_small`` and
``lstm_hyper`` within a small factor of Adam.

Differentiating that form is another matter: autodiff transposes every scalar-times-array term separately, so the
gradient of each weight ``w[i, j]`` becomes its own reduction over the parameters and every activation's cotangent
a chain of scaled adds. For ``ff``'s 18-8-8-2 network that is ~170 reductions per tensor per inner step: truncated
backprop through it compiled to ~60x the forward's HLO (100 s to compile) and ran ~20x slower than the forward.
``apply_small_mlp`` therefore has a custom JVP: the primal is the fused elementwise form (forward results are
unchanged), and the tangent is written with the features stacked into ``(n, size)`` matrices, so its transpose,
the backward pass, is a few matrix multiplies per layer.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

# Gradients are accumulated over many inner steps; keep their contractions in full float32 on accelerators too.
_PRECISION = jax.lax.Precision.HIGHEST


def _elementwise(layers, inputs, first_bias) -> tuple[list[jax.Array], list[list[jax.Array]]]:
  """The MLP as sums of scalar-times-array terms; also returns each hidden layer's pre-activations."""
  h = list(inputs)
  pre_activations = []
  for index, layer in enumerate(layers):
    w, b = layer["w"], layer["b"]
    if index == 0 and first_bias is not None:
      b = b + first_bias
    if index > 0:
      pre_activations.append(h)
      h = [jax.nn.relu(x) for x in h]
    h = [sum((h[i] * w[i, j] for i in range(len(h))), jnp.zeros_like(h[0])) + b[j] for j in range(w.shape[1])]
  return h, pre_activations


@jax.custom_jvp
def _apply(layers, inputs, first_bias):
  return _elementwise(layers, inputs, first_bias)[0]


@_apply.defjvp
def _apply_jvp(primals, tangents):
  """Primal elementwise; tangent (and hence the backward pass) as matrix products over stacked features."""
  layers, inputs, first_bias = primals
  d_layers, d_inputs, d_first_bias = tangents
  out, pre_activations = _elementwise(layers, inputs, first_bias)
  shape = inputs[0].shape
  stack = lambda xs: jnp.stack([x.reshape(-1) for x in xs])  # (features, size)
  matmul = functools.partial(jnp.matmul, precision=_PRECISION)
  n = len(inputs)
  x, dx = stack(inputs), stack(d_inputs)
  dz = None
  for index, (layer, d_layer) in enumerate(zip(layers, d_layers)):
    w, dw = layer["w"], d_layer["w"]
    if index == 0:
      w, dw = w[:n], dw[:n]  # extra rows belong to shared inputs, which first_bias carries.
      db = d_layer["b"] if first_bias is None else d_layer["b"] + d_first_bias
      dz = matmul(dw.T, x) + matmul(w.T, dx) + db[:, None]
    else:
      z = stack(pre_activations[index - 1])
      a = jax.nn.relu(z)
      da = jnp.where(z > 0, dz, 0.0)
      dz = matmul(dw.T, a) + matmul(w.T, da) + d_layer["b"][:, None]
  return out, [row.reshape(shape) for row in dz]


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
