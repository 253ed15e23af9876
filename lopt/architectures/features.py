"""Input features of learned optimizers, computed per parameter and normalised per tensor.

Kept separate from any one architecture so that ``ff``, ``per_tensor`` and ``lstm_hyper`` share one definition.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lopt.architectures import masked_stats

DEFAULT_DECAYS: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
DEFAULT_TIMESCALES: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def update_moments(momenta: Sequence[jax.Array], rms: jax.Array, grad: jax.Array, decays: Sequence[float],
                   rms_decay: float) -> tuple[list[jax.Array], jax.Array]:
  """Exponential moving averages of the gradient (one array per decay) and of its square."""
  momenta = [d * m + (1.0 - d) * grad for d, m in zip(decays, momenta)]
  rms = rms_decay * rms + (1.0 - rms_decay) * jnp.square(grad)
  return momenta, rms


def progress_features(step: jax.Array, num_steps: jax.Array | int,
                      timescales: Sequence[float] = DEFAULT_TIMESCALES) -> jax.Array:
  """Training-progress embedding: the fraction of ``num_steps`` done and ``tanh(step / timescale)``."""
  step = jnp.asarray(step, jnp.float32)
  frac = step / jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
  scales = jnp.asarray(timescales, jnp.float32)
  return jnp.concatenate([jnp.stack([frac, 1.0 - frac]), jnp.tanh(step / scales)])


def num_per_parameter_features(num_decays: int) -> int:
  """Number of arrays ``per_parameter_features`` returns for ``num_decays`` momenta."""
  return 3 + 2 * num_decays


def per_parameter_features(param: jax.Array, grad: jax.Array, momenta: Sequence[jax.Array], rms: jax.Array,
                           eps: float = 1e-8) -> list[jax.Array]:
  """Raw per-parameter features: parameter, gradient, each momentum, 1/sqrt(rms) and each momentum times it.

  Elementwise (any shape: a tensor or a chunk of one), so XLA fuses them with whatever consumes them. Multiplied by
  ``feature_scales`` of the whole tensor they become scale-free inputs (each has RMS 1 over its tensor).
  """
  inv_rms = jax.lax.rsqrt(rms + eps)
  return [param.astype(jnp.float32), grad, *momenta, inv_rms, *(m * inv_rms for m in momenta)]


def feature_scales(param: jax.Array, grad: jax.Array, momenta: Sequence[jax.Array], rms: jax.Array,
                   eps: float = 1e-8, mask: jax.Array | None = None) -> jax.Array:
  """Per-tensor normalisers of ``per_parameter_features``: 1/RMS of each over the whole tensor.

  The mean squares are written as sums of products of the state arrays (``mean(m**2 / (rms + eps))`` rather than
  ``mean((m * rsqrt(rms + eps))**2)``): XLA:CPU reduces such products in one pass without writing the product
  out, whereas reducing a feature that the update loop also computes made it materialise the feature, one
  tensor-sized temporary per feature.

  With a ``mask`` the means run over the active entries only (``masked_stats``).

  Returns:
    Shape ``(num_per_parameter_features(len(momenta)),)``.
  """
  inv_sq = 1.0 / (rms + eps)
  mean = lambda x: masked_stats.mean(x, mask)
  mean_squares = [mean(jnp.square(param.astype(jnp.float32))), mean(jnp.square(grad)),
                  *(mean(jnp.square(m)) for m in momenta), mean(inv_sq),
                  *(mean((m * inv_sq) * m) for m in momenta)]
  return jax.lax.rsqrt(jnp.stack(mean_squares) + eps)


def clip_gradient(grad: jax.Array, limit: float = 1e18) -> jax.Array:
  """Float32 gradient clipped to +-``limit``, so that its square (<= 1e36) stays finite in float32.

  Normalised inputs (gradient over its running RMS) are then bounded whatever the gradient's scale.
  """
  return jnp.clip(grad.astype(jnp.float32), -limit, limit)


def bounded_exp(x: jax.Array, limit: float = 10.0) -> jax.Array:
  """``exp(clip(x))``: a learned log-magnitude can scale a step by at most e^limit either way."""
  return jnp.exp(jnp.clip(x, -limit, limit))


# --- Factored (Adafactor-style) second moments -------------------------------------------------------------------


def is_factored(shape: Sequence[int]) -> bool:
  """Whether a tensor of ``shape`` keeps row/column statistics instead of a full second moment."""
  return len(shape) >= 2


def factored_shapes(shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Shapes of the row statistics (mean over the last axis) and column statistics (mean over the second last)."""
  shape = tuple(shape)
  if not is_factored(shape):
    return shape, ()
  return shape[:-1], shape[:-2] + shape[-1:]


def update_factored(row: jax.Array, col: jax.Array, grad_sq: jax.Array, decay: jax.Array | float,
                    mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """EMAs of the row and column means of ``grad_sq`` (over active entries); for vectors ``row`` is the full
  second moment."""
  if not is_factored(grad_sq.shape):
    return decay * row + (1.0 - decay) * grad_sq, col
  row = decay * row + (1.0 - decay) * masked_stats.mean(grad_sq, mask, axis=-1)
  col = decay * col + (1.0 - decay) * masked_stats.mean(grad_sq, mask, axis=-2)
  return row, col


def factored_rsqrt(row: jax.Array, col: jax.Array, shape: Sequence[int], eps: float = 1e-30,
                   mask: jax.Array | None = None) -> jax.Array:
  """1/sqrt of the rank-one second-moment estimate ``row ⊗ col / mean(row)`` (or of ``row`` for vectors); the mean
  runs over the active rows of ``mask``."""
  if not is_factored(shape):
    return jax.lax.rsqrt(row + eps)
  # Computed as a product of two rsqrts so the full (n, m) estimate is never materialised before the rsqrt.
  row_mean = masked_stats.mean(row, masked_stats.rows(mask), axis=-1, keepdims=True)
  row_scale = jax.lax.rsqrt(row / (row_mean + eps) + eps)
  return row_scale[..., :, None] * jax.lax.rsqrt(col + eps)[..., None, :]


# --- Loss features ------------------------------------------------------------------------------------------------

LOSS_DECAYS: tuple[float, ...] = (0.5, 0.9, 0.99)


def init_loss_state(num_decays: int = len(LOSS_DECAYS)) -> dict[str, jax.Array]:
  """Running averages of the loss (one per decay), the first loss seen and a flag for whether one was seen."""
  return {"ema": jnp.zeros((num_decays,), jnp.float32), "first": jnp.zeros([], jnp.float32),
          "seen": jnp.zeros([], jnp.float32)}


def update_loss_state(state: dict[str, jax.Array], loss: jax.Array | float | None,
                      decays: Sequence[float] = LOSS_DECAYS) -> dict[str, jax.Array]:
  """Folds ``loss`` into the running averages; ``None`` (no loss given) leaves the state unchanged."""
  if loss is None:
    return state
  # A non-finite loss would poison every later feature; it is replaced by the last average.
  loss = jnp.asarray(loss, jnp.float32)
  loss = jnp.where(jnp.isfinite(loss), jnp.clip(loss, -1e30, 1e30), state["ema"][-1])
  decays = jnp.asarray(decays, jnp.float32)
  first = jnp.where(state["seen"] > 0, state["first"], loss)
  ema = jnp.where(state["seen"] > 0, decays * state["ema"] + (1.0 - decays) * loss, loss)
  return {"ema": ema, "first": first, "seen": jnp.ones([], jnp.float32)}


def loss_features(state: dict[str, jax.Array]) -> jax.Array:
  """Normalised loss features: each average relative to the first loss (log-ratio) and fast-minus-slow trends.

  All are zero until a loss has been seen, so optimizers given no loss see constant inputs.
  """
  scale = jnp.abs(state["first"]) + 1e-8
  log_ratio = jnp.log1p(jnp.clip(state["ema"] / scale, -0.99, 1e6)) - jnp.log(2.0)
  trends = (state["ema"][:-1] - state["ema"][1:]) / scale
  return jnp.tanh(jnp.concatenate([log_ratio, trends])) * state["seen"]


def num_loss_features(num_decays: int = len(LOSS_DECAYS)) -> int:
  """Length of ``loss_features``."""
  return 2 * num_decays - 1


# --- Per-tensor statistics ----------------------------------------------------------------------------------------


def shape_features(shape: Sequence[int], mask: jax.Array | None = None) -> jax.Array:
  """Features of a tensor's shape: one-hot rank (0, 1, 2, >= 3) and log size / 10 and log of each axis.

  With a ``mask``, of the active block's shape (``masked_stats.active_shape``); the rank stays the padded one.
  """
  if mask is not None and shape:
    active = masked_stats.active_shape(shape, mask)
    size = jnp.maximum(masked_stats.active_size(shape, mask), 1.0)
    one_hot = jnp.asarray([1.0 if min(len(shape), 3) == r else 0.0 for r in range(4)], jnp.float32)
    logs = jnp.log(jnp.maximum(jnp.stack([size, active[0], active[-1]]), 1.0)) / 10
    return jnp.concatenate([one_hot, logs])
  rank = min(len(shape), 3)
  size = float(np.prod(shape)) if shape else 1.0
  first = float(shape[0]) if shape else 1.0
  last = float(shape[-1]) if shape else 1.0
  one_hot = [1.0 if rank == r else 0.0 for r in range(4)]
  return jnp.asarray(one_hot + [np.log(size) / 10, np.log(first) / 10, np.log(last) / 10], jnp.float32)


NUM_SHAPE_FEATURES = 7


def log_rms(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """log of the root-mean-square of ``x`` (active entries), clipped to a finite range (for zero and overflowing
  tensors), / 10."""
  ms = masked_stats.mean(jnp.square(jnp.clip(x.astype(jnp.float32), -1e18, 1e18)), mask)
  return jnp.log(jnp.clip(ms, 1e-36, 1e36)) / 20.0


def tensor_statistics(param: jax.Array, grad: jax.Array, momentum: jax.Array, rms: jax.Array,
                      mask: jax.Array | None = None, rms_mask: jax.Array | None = None) -> jax.Array:
  """Aggregated statistics of one tensor: log-RMS of parameter, gradient, momentum and second moment, and the
  normalised alignment of gradient and momentum (a cheap measure of how consistent the gradient is).

  ``mask`` marks the active entries of the tensor, ``rms_mask`` those of ``rms`` (its row statistics for matrices).
  """
  g = jnp.clip(grad.astype(jnp.float32), -1e18, 1e18)
  mean = lambda x: masked_stats.mean(x, mask)
  align = mean(g * momentum) * jax.lax.rsqrt(mean(g * g) * mean(momentum * momentum) + 1e-30)
  # The second moment's log-mean is taken directly: sqrt at zero has an infinite derivative.
  rms_stat = jnp.log(jnp.clip(masked_stats.mean(rms, rms_mask), 1e-36, 1e36)) / 20.0
  return jnp.stack([log_rms(param, mask), log_rms(grad, mask), log_rms(momentum, mask), rms_stat, align])


NUM_TENSOR_STATISTICS = 5


# --- Compact per-parameter inputs (ff_small, per_tensor, lstm_hyper) ----------------------------------------------


def init_factored(params) -> tuple:
  """Zero row and column second-moment statistics for every tensor of ``params`` (two trees)."""
  row = jax.tree.map(lambda p: jnp.zeros(factored_shapes(p.shape)[0], jnp.float32), params)
  col = jax.tree.map(lambda p: jnp.zeros(factored_shapes(p.shape)[1], jnp.float32), params)
  return row, col


def compact_inputs(param: jax.Array, grad: jax.Array, momenta: Sequence[jax.Array], row: jax.Array,
                   col: jax.Array, rms_correction: jax.Array, eps: float = 1e-8,
                   mask: jax.Array | None = None) -> tuple[list[jax.Array], jax.Array]:
  """Per-parameter inputs that need no per-tensor reduction except one for the parameter's scale.

  Returns:
    ``[grad, *momenta] / factored_rms`` and the tensor-normalised parameter, as a list of arrays; and the
    (bias-corrected, capped) inverse factored RMS itself, for the nominal step.
  """
  inv_rms = jnp.minimum(factored_rsqrt(row, col, grad.shape, mask=mask) * rms_correction, 1.0 / eps)
  p32 = param.astype(jnp.float32)
  p_n = p32 * jax.lax.rsqrt(masked_stats.mean(jnp.square(p32), mask) + 1e-30)
  return [grad * inv_rms, *(m * inv_rms for m in momenta), p_n], inv_rms
