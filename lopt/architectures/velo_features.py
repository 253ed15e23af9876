"""VeLO's input features (Metz et al. 2022, arXiv 2211.09760), as ``lstm_hyper`` reads them.

Three groups, each a pure function of the optimizer state:

  * progress: the fraction of ``num_steps`` done, embedded as ``tanh(10 (fraction - c))`` at nine points ``c``;
  * loss: running means of the training loss at ten horizons (half-lives from 10 steps to ``num_steps``), each
    compared to its running minimum relative to the next-longer horizon's mean, in [-1, 1];
  * per tensor, for the LSTM: log-variance of each momentum, log-mean and log-variance of the second moment (all
    after dividing by the parameter RMS), and a one-hot of the tensor's rank;
  * per parameter, for the MLP: about 30 arrays (gradient, clipped gradient, parameter, momenta, second moment,
    their ratios and Adafactor-style factored statistics), each with its per-tensor normaliser 1/RMS.

The per-parameter features are returned with their normalisers rather than normalised, so the caller can fold the
normalisers into the first layer of the MLP (a per-tensor product of a few dozen weights instead of a
per-parameter multiply per feature).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lopt.architectures import features

PROGRESS_POINTS: tuple[float, ...] = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
NUM_LOSS_HORIZONS = 10
NUM_RANKS = 5
GRAD_CLIP = 1000.0  # VeLO clips every gradient entry to +-1000 before anything else.
RMS_EPS = 1e-6
NORMALISER_EPS = 1e-5


def fractional_tanh_embed(fraction: jax.Array) -> jax.Array:
  """``tanh(10 (fraction - c))`` for each ``c`` in ``PROGRESS_POINTS``: soft indicators of 'past c of training'."""
  return jnp.tanh(10.0 * (jnp.asarray(fraction, jnp.float32) - jnp.asarray(PROGRESS_POINTS, jnp.float32)))


# --- Loss features --------------------------------------------------------------------------------------------------


def loss_decays(num_steps: int | jax.Array) -> jax.Array:
  """Decays of the running loss means: half-lives log-spaced from 10 steps to ``num_steps`` (at least 10)."""
  top = jnp.log10(jnp.maximum(jnp.asarray(num_steps, jnp.float32), 10.0))
  halflife = 10.0**(1.0 + (top - 1.0) * jnp.linspace(0.0, 1.0, NUM_LOSS_HORIZONS))
  return jnp.exp(-1.0 / halflife)


def init_loss_buffer() -> dict[str, jax.Array]:
  """Running means (uncorrected), their running minima (bias-corrected) and the number of losses seen."""
  return {"means": jnp.zeros((NUM_LOSS_HORIZONS,), jnp.float32),
          "running_min": jnp.full((NUM_LOSS_HORIZONS,), 1e30, jnp.float32), "count": jnp.zeros([], jnp.int32)}


def _corrected(means: jax.Array, decays: jax.Array, count: jax.Array) -> jax.Array:
  return means / jnp.maximum(1.0 - decays**count.astype(jnp.float32), 1e-12)


def update_loss_buffer(state: dict[str, jax.Array], loss: jax.Array | float | None,
                       decays: jax.Array) -> dict[str, jax.Array]:
  """Folds ``loss`` in; as in VeLO a loss above twice the largest running mean is clipped to it (one bad batch
  does not swamp the history). ``None`` leaves the state unchanged; a non-finite loss counts as that cap."""
  if loss is None:
    return state
  loss = jnp.asarray(loss, jnp.float32)
  count = state["count"] + 1
  previous = _corrected(state["means"], decays, state["count"])
  cap = jnp.where(state["count"] == 0, jnp.clip(loss, -1e30, 1e30), 2.0 * jnp.abs(jnp.max(previous)))
  cap = jnp.where(jnp.isfinite(cap), cap, 1e30)
  loss = jnp.where(jnp.isfinite(loss), jnp.minimum(loss, cap), cap)
  means = decays * state["means"] + (1.0 - decays) * loss
  running_min = jnp.minimum(state["running_min"], _corrected(means, decays, count))
  return {"means": means, "running_min": running_min, "count": count}


def loss_features(state: dict[str, jax.Array], decays: jax.Array) -> jax.Array:
  """Per horizon ``h`` (all but the longest): ``(mean_h - min_h) / (mean_{h+1} - min_h) - 1`` clipped to [-1, 1]:
  how far the recent loss sits above its best relative to the longer-run level. Zero for the first two losses."""
  corrected = _corrected(state["means"], decays, state["count"])
  low = state["running_min"][:-1]
  spread = jnp.maximum(corrected[1:] - low, 1e-8)
  value = jnp.clip((corrected[:-1] - low) / spread - 1.0, -1.0, 1.0)
  return jnp.where(state["count"] <= 2, jnp.zeros_like(value), value)


def num_loss_features() -> int:
  """Length of ``loss_features``."""
  return NUM_LOSS_HORIZONS - 1


# --- Per-tensor LSTM inputs -----------------------------------------------------------------------------------------


def _clip_log_abs(x: jax.Array) -> jax.Array:
  """VeLO's squashing of a positive statistic: ``clip(log(1e-8 + |10 x|), -5, 5) / 2``."""
  return jnp.clip(jnp.log(1e-8 + jnp.abs(10.0 * x)), -5.0, 5.0) * 0.5


def rank_one_hot(shape: Sequence[int]) -> jax.Array:
  """One-hot of the number of axes longer than 1 (0..4, larger ranks share the last class)."""
  rank = min(int(np.sum(np.asarray(shape, np.int64) > 1)) if shape else 0, NUM_RANKS - 1)
  return jnp.asarray([1.0 if rank == r else 0.0 for r in range(NUM_RANKS)], jnp.float32)


def tensor_inputs(param: jax.Array, momenta: jax.Array, rms: jax.Array) -> jax.Array:
  """One tensor's statistics for the LSTM: per momentum its log-variance, the second moment's log-mean and
  log-variance, all after dividing by the parameter RMS (so they are relative to the parameter's scale), and the
  rank one-hot. ``momenta`` is stacked over decays, ``(num_decays, *shape)``.
  """
  p32 = param.astype(jnp.float32)
  norm = jax.lax.rsqrt(jnp.maximum(jnp.mean(jnp.square(p32)), 1e-9))
  axes = tuple(range(1, momenta.ndim))
  m = momenta * norm
  var_m = jnp.mean(jnp.square(m), axis=axes) - jnp.square(jnp.mean(m, axis=axes))
  v = rms * norm
  mean_v = jnp.mean(v)
  var_v = jnp.mean(jnp.square(v)) - jnp.square(mean_v)
  stats = _clip_log_abs(jnp.concatenate([jnp.maximum(var_m, 0.0), jnp.stack([mean_v, jnp.maximum(var_v, 0.0)])]))
  return jnp.concatenate([stats, rank_one_hot(param.shape)])


def num_tensor_inputs(num_momenta: int) -> int:
  """Length of ``tensor_inputs``."""
  return num_momenta + 2 + NUM_RANKS


# --- Per-parameter MLP inputs ---------------------------------------------------------------------------------------


def num_parameter_features(num_momenta: int, num_factored: int) -> int:
  """Number of arrays ``parameter_features`` returns."""
  return 6 + 2 * num_momenta + 5 * num_factored + min(num_momenta, num_factored)


def adam_feature_index(num_momenta: int) -> int:
  """Index of ``m_0 / sqrt(v)`` (first momentum over the second moment) in ``parameter_features``."""
  return 4 + num_momenta


def parameter_features(param: jax.Array, grad: jax.Array, momenta: jax.Array, rms: jax.Array, rows: jax.Array,
                       cols: jax.Array) -> tuple[list[jax.Array], jax.Array]:
  """VeLO's per-parameter inputs of one tensor and their normalisers.

  Args:
    param, grad: the tensor and its (clipped, float32) gradient.
    momenta: ``(num_momenta, *shape)`` momenta at VeLO's decays.
    rms: the second moment, ``shape``.
    rows, cols: ``(num_factored, ...)`` Adafactor row/column second moments (``features.update_factored``; for
      vectors and scalars ``rows`` holds the full second moment and ``cols`` is unused).

  Returns:
    The features, in order: g, clip(g, +-0.1), p, each m, v, each m/sqrt(v), 1/sqrt(v), g/sqrt(v); per factored
    decay j: g/sqrt(fac_j); the row and the column statistic of fac_j, and 1/sqrt of each (broadcast to the
    tensor); and m_j/sqrt(fac_j) for the first min(#momenta, #factored) pairs. And their normalisers
    ``rsqrt(1e-5 + mean(f**2))`` over the tensor, shape ``(num_features,)``.
  """
  shape = grad.shape
  p = param.astype(jnp.float32)
  inv_v = 1.0 / (rms + RMS_EPS)
  rsqrt_v = jax.lax.rsqrt(rms + RMS_EPS)
  moms = [momenta[i] for i in range(momenta.shape[0])]
  clipped = jnp.clip(grad, -0.1, 0.1)
  feats = [grad, clipped, p, *moms, rms, *(m * rsqrt_v for m in moms), rsqrt_v, grad * rsqrt_v]
  # Mean squares from the state arrays directly (see features.feature_scales: XLA then reduces without writing the
  # feature out).
  squares = [jnp.mean(jnp.square(grad)), jnp.mean(jnp.square(clipped)), jnp.mean(jnp.square(p)),
             *(jnp.mean(jnp.square(m)) for m in moms), jnp.mean(jnp.square(rms)),
             *(jnp.mean((m * inv_v) * m) for m in moms), jnp.mean(inv_v), jnp.mean((grad * inv_v) * grad)]
  factored = features.is_factored(shape)
  num_factored = rows.shape[0]
  fac_rsqrt = [features.factored_rsqrt(rows[j], cols[j], shape, eps=1e-9) for j in range(num_factored)]
  fac_sq = [jnp.square(f) for f in fac_rsqrt]
  feats += [grad * f for f in fac_rsqrt]
  squares += [jnp.mean(jnp.square(grad) * f) for f in fac_sq]
  if factored:
    # Row statistics broadcast along the last axis, column statistics along the second last.
    row_b = [jnp.broadcast_to(rows[j][..., None], shape) for j in range(num_factored)]
    col_b = [jnp.broadcast_to(cols[j][..., None, :], shape) for j in range(num_factored)]
    row_v, col_v = [rows[j] for j in range(num_factored)], [cols[j] for j in range(num_factored)]
  else:
    row_b = col_b = [rows[j] for j in range(num_factored)]
    row_v = col_v = row_b
  # A broadcast statistic's mean square over the tensor is its own mean square: computed on the small vectors.
  feats += row_b + col_b
  squares += [jnp.mean(jnp.square(r)) for r in row_v] + [jnp.mean(jnp.square(c)) for c in col_v]
  feats += [jax.lax.rsqrt(r + 1e-8) for r in row_b] + [jax.lax.rsqrt(c + 1e-8) for c in col_b]
  squares += [jnp.mean(1.0 / (r + 1e-8)) for r in row_v] + [jnp.mean(1.0 / (c + 1e-8)) for c in col_v]
  pairs = min(len(moms), num_factored)
  feats += [moms[j] * fac_rsqrt[j] for j in range(pairs)]
  squares += [jnp.mean((jnp.square(moms[j]) * fac_sq[j])) for j in range(pairs)]
  normalisers = jax.lax.rsqrt(jnp.stack(squares) + NORMALISER_EPS)
  return feats, normalisers
