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

from lopt.architectures import features, masked_stats

PROGRESS_POINTS: tuple[float, ...] = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
NUM_LOSS_HORIZONS = 10
NUM_RANKS = 5
GRAD_CLIP = 1000.0  # VeLO clips every gradient entry to +-1000 before anything else.
RMS_EPS = 1e-6
NORMALISER_EPS = 1e-5
SAMPLE_SIZE = 4096  # tensors larger than this are summarised from a fixed sample of this many entries


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


def rank_one_hot(shape: Sequence[int], mask: jax.Array | None = None) -> jax.Array:
  """One-hot of the number of axes longer than 1 (0..4, larger ranks share the last class); of the active block's
  axes with a ``mask``."""
  if mask is not None and shape:
    active = jnp.stack(masked_stats.active_shape(shape, mask))
    rank = jnp.minimum(jnp.sum(active > 1), NUM_RANKS - 1)
    return (jnp.arange(NUM_RANKS) == rank).astype(jnp.float32)
  rank = min(int(np.sum(np.asarray(shape, np.int64) > 1)) if shape else 0, NUM_RANKS - 1)
  return jnp.asarray([1.0 if rank == r else 0.0 for r in range(NUM_RANKS)], jnp.float32)


def tensor_inputs(param: jax.Array, momenta: Sequence[jax.Array], rms: jax.Array,
                  sample_size: int = SAMPLE_SIZE, mask: jax.Array | None = None) -> jax.Array:
  """One tensor's statistics for the LSTM: per momentum its log-variance, the second moment's log-mean and
  log-variance, all after dividing by the parameter RMS (so they are relative to the parameter's scale), and the
  rank one-hot. Tensors larger than ``sample_size`` are summarised from a fixed sample (``sample_indices``).
  ``momenta``: one array per decay. With a ``mask`` the statistics run over active entries (of the sample).
  """
  # Statistics of large tensors on the same fixed sample as ``parameter_features``'s normalisers.
  indices = sample_indices(param.shape, sample_size)
  pick = lambda x: take_sample(x, param.shape, indices)
  momenta, rms = [pick(m) for m in momenta], pick(rms)
  p32 = pick(param.astype(jnp.float32))
  active = None if mask is None else pick(jnp.broadcast_to(mask, param.shape))
  mean = lambda x: masked_stats.mean(x, active)
  norm = jax.lax.rsqrt(jnp.maximum(mean(jnp.square(p32)), 1e-9))
  # Variances as E[x^2] - E[x]^2 of the raw momenta: reductions XLA can take straight from the state arrays.
  var_m = jnp.stack([mean(jnp.square(m)) - jnp.square(mean(m)) for m in momenta]) * jnp.square(norm)
  mean_v = mean(rms) * norm
  var_v = mean(jnp.square(rms)) * jnp.square(norm) - jnp.square(mean_v)
  stats = _clip_log_abs(jnp.concatenate([jnp.maximum(var_m, 0.0), jnp.stack([mean_v, jnp.maximum(var_v, 0.0)])]))
  return jnp.concatenate([stats, rank_one_hot(param.shape, mask)])


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


def sample_indices(shape: Sequence[int], sample_size: int = SAMPLE_SIZE) -> np.ndarray | None:
  """Flat indices of a fixed, evenly strided subsample (at most ``sample_size``, at least about half as many
  entries) of a tensor of ``shape``, or ``None`` (use every entry) for tensors of at most ``sample_size`` entries.

  The stride is coprime to the last axis, so the sample visits every column (and every row of a tall matrix) as
  evenly as a sample of that size can: statistics of row- or column-structured features are not aliased.
  """
  size = int(np.prod(shape)) if len(shape) else 1
  if size <= sample_size:
    return None
  stride = -(-size // sample_size)
  last = int(shape[-1])
  while np.gcd(stride, last) != 1:
    stride += 1
  return np.arange(0, size, stride, dtype=np.int64)[:sample_size]


def take_sample(x: jax.Array, shape: Sequence[int], indices: np.ndarray | None) -> jax.Array:
  """The entries of ``x`` (of ``shape`` or broadcastable to it, e.g. ``(n, 1)``) at flat ``indices`` of ``shape``."""
  if indices is None:
    return x
  x = jnp.asarray(x)
  if x.shape == tuple(shape):
    return x.reshape(-1)[indices]
  coords = np.unravel_index(indices, tuple(shape))
  offset = len(shape) - x.ndim  # leading axes x lacks are broadcast
  index = tuple(np.zeros_like(indices) if x.shape[a] == 1 else coords[a + offset] for a in range(x.ndim))
  return x[index]


def _factored_rsqrt_factors(row: jax.Array, col: jax.Array, shape: Sequence[int], eps: float = 1e-9,
                            mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """``features.factored_rsqrt`` as two factors whose product it is: for matrices a row factor ``(..., n, 1)`` and
  a column factor ``(..., 1, m)``; for vectors and scalars the full value and 1."""
  if not features.is_factored(shape):
    return jax.lax.rsqrt(row + eps), jnp.ones([], jnp.float32)
  row_mean = masked_stats.mean(row, masked_stats.rows(mask), axis=-1, keepdims=True)
  row_scale = jax.lax.rsqrt(row / (row_mean + eps) + eps)
  return row_scale[..., :, None], jax.lax.rsqrt(col + eps)[..., None, :]


def _feature_list(p: jax.Array, grad: jax.Array, moms: Sequence[jax.Array], rms: jax.Array,
                  fac: Sequence[tuple[jax.Array, jax.Array]], row_b: Sequence[jax.Array],
                  col_b: Sequence[jax.Array]) -> list[jax.Array]:
  """The features, in ``parameter_features``'s order, from raw (full or sampled) arrays."""
  rsqrt_v = jax.lax.rsqrt(rms + RMS_EPS)
  feats = [grad, jnp.clip(grad, -0.1, 0.1), p, *moms, rms, *(m * rsqrt_v for m in moms), rsqrt_v, grad * rsqrt_v]
  feats += [(grad * a) * b for a, b in fac]
  feats += list(row_b) + list(col_b)
  feats += [jax.lax.rsqrt(r + 1e-8) for r in row_b] + [jax.lax.rsqrt(c + 1e-8) for c in col_b]
  feats += [(m * a) * b for m, (a, b) in zip(moms, fac)]
  return feats


def parameter_features(param: jax.Array, grad: jax.Array, momenta: Sequence[jax.Array], rms: jax.Array,
                       rows: jax.Array, cols: jax.Array, sample_size: int = SAMPLE_SIZE,
                       mask: jax.Array | None = None) -> tuple[list[jax.Array], jax.Array]:
  """VeLO's per-parameter inputs of one tensor and their normalisers.

  Args:
    param, grad: the tensor and its (clipped, float32) gradient.
    momenta: one array per momentum decay.
    rms: the second moment, ``shape``.
    rows, cols: ``(num_factored, ...)`` Adafactor row/column second moments (``features.update_factored``; for
      vectors and scalars ``rows`` holds the full second moment and ``cols`` is unused).
    sample_size: tensors larger than this estimate the normalisers on a fixed strided sample of this many entries
      (``sample_indices``).
    mask: the tensor's active entries (``masked_stats``): the normalisers are taken over them only.

  Returns:
    The features, in order: g, clip(g, +-0.1), p, each m, v, each m/sqrt(v), 1/sqrt(v), g/sqrt(v); per factored
    decay j: g/sqrt(fac_j); the row and the column statistic of each fac_j, and 1/sqrt of each (of matrices kept
    at broadcastable shapes, ``(..., n, 1)`` and ``(..., 1, m)``); and m_j/sqrt(fac_j) for the first
    min(#momenta, #factored) pairs. And their normalisers ``rsqrt(1e-5 + mean(f**2))``, shape
    ``(num_features,)``.

  Why a sample: VeLO normalises each of ~30 features by its RMS over the tensor. Exactly, that is ~30 reductions,
  each a pass over the tensor, and on CPU they cost several times an Adam step. A normaliser is one scale per
  tensor; estimated from 4,096 evenly spread entries it is within a few percent, at no per-parameter cost.
  """
  shape = grad.shape
  p = param.astype(jnp.float32)
  num_factored = rows.shape[0]
  fac = [_factored_rsqrt_factors(rows[j], cols[j], shape, mask=mask) for j in range(num_factored)]
  if features.is_factored(shape):
    # Row statistics vary along all but the last axis, column statistics along all but the second last. They are
    # kept at their broadcastable shapes: the caller's first layer combines them on the small arrays and
    # broadcasts once, instead of computing per parameter what is constant along an axis.
    row_b = [rows[j][..., None] for j in range(num_factored)]
    col_b = [cols[j][..., None, :] for j in range(num_factored)]
  else:
    row_b = col_b = [rows[j] for j in range(num_factored)]
  # Computed once on the small arrays (see lstm_hyper._first_layer: fused, XLA recomputes them per entry).
  fac, row_b, col_b = jax.lax.optimization_barrier((fac, row_b, col_b))
  feats = _feature_list(p, grad, list(momenta), rms, fac, row_b, col_b)
  indices = sample_indices(shape, sample_size)
  pick = lambda x: take_sample(x, shape, indices)
  sampled = _feature_list(pick(p), pick(grad), [pick(m) for m in momenta], pick(rms),
                          [(pick(a), pick(b)) for a, b in fac], [pick(r) for r in row_b], [pick(c) for c in col_b])
  # Each feature broadcast to the sampled positions (or the tensor) before squaring, so a row statistic counts once
  # per entry, as in the tensor.
  target = sampled[0].shape
  active = None if mask is None else pick(jnp.broadcast_to(mask, shape))
  mean_squares = jnp.stack([masked_stats.mean(jnp.square(jnp.broadcast_to(f, target)), active) for f in sampled])
  return feats, jax.lax.rsqrt(mean_squares + NORMALISER_EPS)
