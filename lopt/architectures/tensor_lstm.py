"""The per-tensor half of the hierarchical ``per_tensor`` design (Metz et al. 2020).

It keeps, per tensor, momenta at a few decays, Adafactor-style row/column second moments and an LSTM state. Each
step they first update the moments and summarise every tensor (statistics and shape) for one batched LSTM step
over all tensors; then, per parameter, a small MLP reads compact inputs and corrects a nominal step (bias-corrected
first momentum over the factored RMS). ``lstm_hyper`` (VeLO) has its own features and step in
``velo_features.py``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from lopt.architectures import features, masked_stats
from lopt.types import Params


def init_state(params: Params, *, num_decays: int, lstm_hidden: int) -> dict[str, Params]:
  """Zero ``momenta`` (stacked over decays per tensor), ``row``/``col`` second moments, ``lstm_h``/``lstm_c``."""
  row, col = features.init_factored(params)
  zeros = lambda shape: jax.tree.map(lambda _: jnp.zeros(shape, jnp.float32), params)
  return {"momenta": jax.tree.map(lambda p: jnp.zeros((num_decays,) + p.shape, jnp.float32), params),
          "row": row, "col": col, "lstm_h": zeros((lstm_hidden,)), "lstm_c": zeros((lstm_hidden,))}


def update_moments(grads: Sequence[jax.Array], params: Sequence[jax.Array], momenta: Sequence[jax.Array],
                   rows: Sequence[jax.Array], cols: Sequence[jax.Array], *, decays: Sequence[float],
                   rms_decay: float, masks: Sequence[jax.Array | None] | None = None
                   ) -> tuple[list[tuple[jax.Array, jax.Array, jax.Array]], jax.Array]:
  """Folds each tensor's gradient into its moments and summarises the tensor for the LSTM.

  Args:
    grads, params, momenta, rows, cols: one entry per tensor (flattened leaves, in one order).
    decays: momentum decays, in the order ``momenta`` stacks them.
    rms_decay: decay of the factored second moments.
    masks: per tensor its active entries (``masked_stats``), or None for all.

  Returns:
    ``(momenta, row, col)`` per tensor; and per tensor, its statistics and shape features stacked,
    ``(num_tensors, NUM_TENSOR_STATISTICS + NUM_SHAPE_FEATURES)``.
  """
  decays = jnp.asarray(decays, jnp.float32)
  moments, summaries = [], []
  masks = [None] * len(grads) if masks is None else masks
  for g, p, m, row, col, mask in zip(grads, params, momenta, rows, cols, masks):
    g = features.clip_gradient(g)
    shaped = decays.reshape((-1,) + (1,) * g.ndim)
    m = shaped * m + (1.0 - shaped) * g[None]
    row, col = features.update_factored(row, col, jnp.square(g), rms_decay, mask=mask)
    moments.append((m, row, col))
    row_mask = masked_stats.rows(mask) if features.is_factored(g.shape) else mask
    summaries.append(jnp.concatenate([features.tensor_statistics(p, g, m[0], row, mask, row_mask),
                                      features.shape_features(g.shape, mask)]))
  return moments, jnp.stack(summaries)


def mlp_inputs(grad: jax.Array, param: jax.Array, moments: tuple[jax.Array, jax.Array, jax.Array], *,
               rms_correction: jax.Array, m_correction: jax.Array, eps: float,
               mask: jax.Array | None = None) -> tuple[list[jax.Array], jax.Array]:
  """One tensor's per-parameter MLP inputs (``features.compact_inputs``) and its nominal step direction.

  Args:
    grad, param: the tensor's gradient and value.
    moments: its ``(momenta, row, col)`` from ``update_moments``.
    rms_correction: ``sqrt(1 - rms_decay**t)``, the second moments' bias correction.
    m_correction: ``1 - decays[0]**t``, the first momentum's bias correction.
    eps: cap of the inverse RMS is ``1/eps``.
  """
  m, row, col = moments
  inputs, inv_rms = features.compact_inputs(param, features.clip_gradient(grad), list(m), row, col, rms_correction,
                                            eps, mask=mask)
  return inputs, m[0] * inv_rms / m_correction
