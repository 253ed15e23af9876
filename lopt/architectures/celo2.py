"""``celo2``: a Celo2-style learned update rule (Moudgil, Knyazev, Belilovsky, ICLR 2026; arXiv 2602.19142).

A per-parameter MLP (two hidden layers of 8, ReLU) reads 15 features of every parameter (gradient, clipped
gradient, parameter, three momenta, a second moment, momenta and gradient over its root, its inverse root, the
gradient over three Adafactor-style factored second moments) and, for matrices, 15 more from the factored
accumulators (row and column statistics, their inverse roots, the momenta over the factored root). Every input is
divided by its root mean square over the tensor's last two axes. The MLP's single output is the update *direction*:
for matrices it is orthogonalised by Newton-Schulz iterations (as Muon does), then every tensor's direction is
divided by its RMS over the last two axes. The network therefore sets only the shape of a step, never its size:
the size is the user's learning-rate schedule (``learning_rate`` times ``schedule``; cosine decay with a linear
warm-up by default). The rule reads no training-progress or loss features, which is what lets it run at horizons
and scales it never saw.

The harness (``vectors="adamw"``, Celo2's released variant) routes vectors, scalars and embedding tables to
``optax.adamw`` on the same schedule and the learned rule to every other tensor; ``vectors="learned"`` (Celo2-base)
applies the learned rule to everything. Meta-training runs inside the harness, as Celo2's does.

Deviations from the published code, each a choice of this module: the MLP has one output (Celo2 computes three and
uses one), the factored statistics use the last two axes (Celo2: the two largest), and ``init="momentum"`` (the
default) starts from a network that passes one feature, the first momentum over the second-moment root, straight
through, so that the untrained rule is an orthogonalised, RMS-normalised Adam-like step rather than a random one
(``init="random"`` is Celo2's truncated-normal start).
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from lopt import arguments
from lopt.architectures import features, masked_stats
from lopt.architectures.base import LearnedOptimizer, check_decay
from lopt.architectures.small_mlp import apply_small_mlp
from lopt.registry import register
from lopt.types import MetaParams, Params, PRNGKey

MOMENTUM_DECAYS: tuple[float, ...] = (0.9, 0.99, 0.999)
RMS_DECAY = 0.95
FACTORED_DECAYS: tuple[float, ...] = (0.9, 0.99, 0.999)
# Quintic Newton-Schulz coefficients (Muon's): five iterations map every singular value into about [0.7, 1.2].
NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
GRAD_CLIP = 1000.0
SCHEDULES: tuple[str, ...] = ("warmup_cosine", "cosine", "constant")
VECTOR_RULES: tuple[str, ...] = ("adamw", "learned")
INITS: tuple[str, ...] = ("momentum", "random")
# Tensors whose path matches go to the AdamW branch of the harness whatever their rank (embedding tables).
EMBEDDING_PATTERN = re.compile("embed", re.IGNORECASE)


def num_features(num_momenta: int = 3, num_factored: int = 3, *, matrix: bool = True) -> int:
  """Inputs of the per-parameter MLP: 6 + 2 * momenta + factored for every tensor, 5 * factored more for matrices."""
  return 6 + 2 * num_momenta + num_factored + (5 * num_factored if matrix else 0)


def _normalize(x: jax.Array, eps: float = 1e-9, mask: jax.Array | None = None) -> jax.Array:
  """``x`` over its root mean square across the last two axes (the whole tensor for vectors and scalars), taken
  over the active entries of ``mask``."""
  axes = tuple(range(max(x.ndim - 2, 0), x.ndim))
  return x * jax.lax.rsqrt(masked_stats.mean(jnp.square(x), mask, axis=axes, keepdims=True) + eps)


def _safe_rsqrt(x: jax.Array) -> jax.Array:
  return jax.lax.rsqrt(jnp.maximum(x, 1e-9))


def newton_schulz(x: jax.Array, *, steps: int = 5, coefficients: Sequence[float] = NS_COEFFICIENTS,
                  eps: float = 1e-8) -> jax.Array:
  """Approximately orthogonalises the last two axes of ``x`` (leading axes are a batch): ``U V^T`` of its SVD.

  Raises:
    ValueError: for fewer than two axes.
  """
  if x.ndim < 2:
    raise ValueError(f"newton_schulz needs a matrix (>= 2 axes), got shape {x.shape}.")
  a, b, c = coefficients
  tall = x.shape[-2] > x.shape[-1]
  if tall:  # iterate on the wide orientation: the Gram matrix is the smaller one
    x = jnp.swapaxes(x, -2, -1)
  x = x / (jnp.linalg.norm(x, axis=(-2, -1), keepdims=True) + eps)
  for _ in range(steps):
    gram = x @ jnp.swapaxes(x, -2, -1)
    x = a * x + (b * gram + c * gram @ gram) @ x
  return jnp.swapaxes(x, -2, -1) if tall else x


class Celo2State(NamedTuple):
  """State of the learned rule: momenta (one tree per decay), second moment, factored row/column moments."""

  momenta: tuple[Params, ...]
  rms: Params
  rows: tuple[Params, ...]
  cols: tuple[Params, ...]


def _factored_features(g: jax.Array, momenta: Sequence[jax.Array], rows: Sequence[jax.Array],
                       cols: Sequence[jax.Array], mask: jax.Array | None = None
                       ) -> tuple[list[jax.Array], list[jax.Array]]:
  """The gradient over each factored root (every tensor) and the matrix-only factored features."""
  if not features.is_factored(g.shape):
    return [g * _safe_rsqrt(v + 1e-9) for v in rows], []
  scaled, matrix = [], []
  row_feats, col_feats, row_rsqrts, col_rsqrts = [], [], [], []
  for m, row, col in zip(momenta, rows, cols):
    row_mean = masked_stats.mean(row, masked_stats.rows(mask), axis=-1, keepdims=True)
    row_factor = _safe_rsqrt(row / (row_mean + 1e-9))[..., :, None]
    col_factor = _safe_rsqrt(col)[..., None, :]
    scaled.append(g * row_factor * col_factor)
    row_b, col_b = jnp.broadcast_to(row[..., :, None], g.shape), jnp.broadcast_to(col[..., None, :], g.shape)
    row_feats.append(row_b)
    col_feats.append(col_b)
    row_rsqrts.append(jax.lax.rsqrt(row_b + 1e-8))
    col_rsqrts.append(jax.lax.rsqrt(col_b + 1e-8))
    matrix.append(m * row_factor * col_factor)
  return scaled, row_feats + col_feats + row_rsqrts + col_rsqrts + matrix


def direction_inputs(p: jax.Array, g: jax.Array, momenta: Sequence[jax.Array], rms: jax.Array,
                     rows: Sequence[jax.Array], cols: Sequence[jax.Array],
                     mask: jax.Array | None = None) -> list[jax.Array]:
  """The MLP's inputs for one tensor, each normalised over the last two axes (``num_features`` of them) on the
  active entries of ``mask``."""
  rsqrt = jax.lax.rsqrt(rms + 1e-8)
  fac_g, matrix = _factored_features(g, momenta, rows, cols, mask)
  raw = [g, jnp.clip(g, -0.1, 0.1), p.astype(jnp.float32), *momenta, rms, *(m * rsqrt for m in momenta), rsqrt,
         *fac_g, g * rsqrt, *matrix]
  return [_normalize(x, mask=mask) for x in raw]


def momentum_input_index(num_momenta: int = 3) -> int:
  """Index in ``direction_inputs`` of the first momentum over the second-moment root (the pass-through input)."""
  return 3 + num_momenta + 1


def scale_by_celo2(theta: MetaParams, *, orthogonalize: bool = True, normalize_output: bool = True, ns_steps: int = 5,
                   momentum_decays: Sequence[float] = MOMENTUM_DECAYS, rms_decay: float = RMS_DECAY,
                   factored_decays: Sequence[float] = FACTORED_DECAYS) -> optax.GradientTransformationExtraArgs:
  """The learned direction, RMS 1 per tensor (over its last two axes); chain a learning rate after it.

  Args:
    theta: ``{"mlp": layers}`` from ``celo2(...).init``.
    orthogonalize: Newton-Schulz-orthogonalise the direction of every tensor with two or more axes.
    normalize_output: divide each direction by its RMS (Celo2); off, the MLP's raw output is the step direction
      (an ablation: the network then sets step sizes too).
    ns_steps: Newton-Schulz iterations.
    momentum_decays, rms_decay, factored_decays: the accumulators' decays (Celo2's by default).
  """
  layers = theta["mlp"]

  def init(params: Params) -> Celo2State:
    zeros = lambda: jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    row, col = features.init_factored(params)
    return Celo2State(momenta=tuple(zeros() for _ in momentum_decays), rms=zeros(),
                      rows=tuple(row for _ in factored_decays), cols=tuple(col for _ in factored_decays))

  def leaf(g, p, momenta, rms, rows, cols, active):
    g = jnp.clip(g.astype(jnp.float32), -GRAD_CLIP, GRAD_CLIP)
    momenta = [d * m + (1.0 - d) * g for d, m in zip(momentum_decays, momenta)]
    rms = rms_decay * rms + (1.0 - rms_decay) * jnp.square(g)
    g_sq = jnp.square(g) + 1e-30
    rows, cols = zip(*(features.update_factored(r, c, g_sq, d, mask=active)
                       for r, c, d in zip(rows, cols, factored_decays)))
    (direction,) = apply_small_mlp(layers, direction_inputs(p, g, momenta, rms, rows, cols, active))
    # Inactive entries are zeroed before orthogonalising: Newton-Schulz keeps zero rows and columns zero, so the
    # active block is orthogonalised as the unpadded matrix would be.
    direction = masked_stats.zero_inactive(direction, active)
    if orthogonalize and direction.ndim >= 2:
      direction = newton_schulz(direction, steps=ns_steps)
    direction = _normalize(direction, mask=active) if normalize_output else direction
    return direction, tuple(momenta), rms, tuple(rows), tuple(cols)

  def update(updates, state: Celo2State, params=None, *, mask=None, **extra):
    del extra  # the loss and other inputs: the rule reads none
    if params is None:
      raise ValueError("The celo2 learned optimizer needs `params` in update(grads, state, params).")
    treedef = jax.tree.structure(updates)
    per_leaf = lambda trees: treedef.unflatten(list(zip(*(treedef.flatten_up_to(t) for t in trees))))
    masks = treedef.unflatten(masked_stats.leaves(mask, treedef))
    results = jax.tree.map(leaf, updates, params, per_leaf(state.momenta), state.rms, per_leaf(state.rows),
                           per_leaf(state.cols), masks)
    flat = treedef.flatten_up_to(results)
    unzip = lambda i: treedef.unflatten([r[i] for r in flat])
    unzip_each = lambda i, n: tuple(treedef.unflatten([r[i][k] for r in flat]) for k in range(n))
    new_state = Celo2State(momenta=unzip_each(1, len(momentum_decays)), rms=unzip(2),
                           rows=unzip_each(3, len(factored_decays)), cols=unzip_each(4, len(factored_decays)))
    directions = jax.tree.map(lambda d, p: d.astype(p.dtype), unzip(0), params)
    return directions, new_state

  return optax.GradientTransformationExtraArgs(init, update)


def schedule_fn(name: str, learning_rate: float | jax.Array, num_steps: int | jax.Array, *,
                warmup_fraction: float = 0.05, final_fraction: float = 0.01) -> optax.Schedule:
  """``count -> learning rate`` for a run of ``num_steps`` updates (traceable in ``num_steps``).

  ``"warmup_cosine"``: linear from 0 over the first ``warmup_fraction`` of the run, then cosine decay to
  ``final_fraction * learning_rate`` at ``num_steps``; ``"cosine"``: the same without warm-up; ``"constant"``.
  """
  if name not in SCHEDULES:
    raise ValueError(f"Unknown schedule {name!r}; schedules: {', '.join(SCHEDULES)}.")

  def schedule(count):
    if name == "constant":
      return jnp.asarray(learning_rate, jnp.float32)
    t = jnp.asarray(count, jnp.float32)
    total = jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
    warmup = total * warmup_fraction if name == "warmup_cosine" else jnp.float32(0.0)
    ramp = jnp.minimum((t + 1.0) / jnp.maximum(warmup, 1.0), 1.0)
    progress = jnp.clip((t - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    decay = final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return learning_rate * jnp.where(t < warmup, ramp, decay)

  return schedule


def route(params: Params, vectors: str) -> Params:
  """Per tensor ``"learned"`` or ``"adamw"``: with ``vectors="adamw"``, tensors of rank < 2 and embedding tables
  (a path matching ``EMBEDDING_PATTERN``) go to AdamW; with ``"learned"`` every tensor takes the learned rule."""
  def label(path, p):
    if vectors == "learned":
      return "learned"
    vector = jnp.ndim(p) < 2 or EMBEDDING_PATTERN.search(jax.tree_util.keystr(path)) is not None
    return "adamw" if vector else "learned"

  return jax.tree_util.tree_map_with_path(label, params)


def _init_mlp(key: PRNGKey, sizes: Sequence[int], init: str, pass_through: int) -> list[dict[str, jax.Array]]:
  """Truncated-normal weights (std 1/sqrt(fan-in)) and zero biases; ``"momentum"`` then wires two ReLU units per
  hidden layer so that the output starts as input ``pass_through`` (relu(x) - relu(-x) = x), others near zero."""
  layers = []
  for k, n_in, n_out in zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:]):
    w = jax.random.truncated_normal(k, -2.0, 2.0, (n_in, n_out), jnp.float32) / jnp.sqrt(n_in)
    layers.append({"w": w, "b": jnp.zeros((n_out,), jnp.float32)})
  if init == "momentum":
    first, *hidden, last = layers
    first["w"] = first["w"].at[:, :2].set(0.0).at[pass_through, 0].set(1.0).at[pass_through, 1].set(-1.0)
    for layer in hidden:
      layer["w"] = layer["w"].at[:, :2].set(0.0).at[:2, :].set(0.0).at[0, 0].set(1.0).at[1, 1].set(1.0)
    last["w"] = (last["w"] * 0.01).at[0, 0].set(1.0).at[1, 0].set(-1.0)
  return layers


@register("architecture", "celo2")
def celo2(*, hidden_sizes: Sequence[int] = (8, 8), learning_rate: float = 1e-3, schedule: str = "warmup_cosine",
          warmup_fraction: float = 0.05, final_fraction: float = 0.01, vectors: str = "adamw",
          orthogonalize: bool = True, normalize_output: bool = True, ns_steps: int = 5,
          adam_learning_rate_multiplier: float = 1.0, adam_b1: float = 0.9, adam_b2: float = 0.95,
          weight_decay: float = 0.0, init: str = "momentum",
          momentum_decays: Sequence[float] = MOMENTUM_DECAYS, rms_decay: float = RMS_DECAY,
          factored_decays: Sequence[float] = FACTORED_DECAYS) -> LearnedOptimizer:
  """Celo2: a learned, RMS-normalised update direction times the user's learning-rate schedule.

  Args:
    hidden_sizes: widths of the per-parameter MLP's hidden layers.
    learning_rate: peak learning rate (RMS of each tensor's step at the peak; Celo2's update multiplier 1e-3).
    schedule: ``"warmup_cosine"`` (default), ``"cosine"`` or ``"constant"``; ``optimizer(..., schedule=fn)``
      replaces it with any ``count -> learning rate`` function.
    warmup_fraction: fraction of the run spent warming up (``"warmup_cosine"``).
    final_fraction: the cosine ends at this fraction of the peak.
    vectors: ``"adamw"`` (the harness: vectors, scalars and embeddings train with AdamW) or ``"learned"``.
    orthogonalize: Newton-Schulz-orthogonalise the learned direction of matrices.
    normalize_output: divide every tensor's direction by its RMS (Celo2); False is an ablation.
    ns_steps: Newton-Schulz iterations.
    adam_learning_rate_multiplier: the AdamW branch runs at this multiple of the schedule.
    adam_b1, adam_b2: AdamW's decays (Celo2's 0.9 and 0.95).
    weight_decay: decoupled weight decay of both branches (times the learning rate).
    init: ``"momentum"`` (the untrained rule passes the first momentum over the second-moment root through) or
      ``"random"`` (Celo2's truncated-normal start).
    momentum_decays, rms_decay, factored_decays: the accumulators' decays.
  """
  owner = "architectures.celo2"
  hidden_sizes = arguments.integers(f"{owner}.hidden_sizes", hidden_sizes, minimum=2 if init == "momentum" else 1)
  if not hidden_sizes:
    raise arguments.ArgumentError(f"{owner}.hidden_sizes", "needs at least one hidden layer.")
  learning_rate = arguments.real(f"{owner}.learning_rate", learning_rate, minimum=0.0, open_minimum=True)
  schedule = arguments.choice(f"{owner}.schedule", schedule, SCHEDULES)
  warmup_fraction = arguments.real(f"{owner}.warmup_fraction", warmup_fraction, minimum=0.0, maximum=1.0,
                                   open_maximum=True)
  final_fraction = arguments.real(f"{owner}.final_fraction", final_fraction, minimum=0.0, maximum=1.0)
  vectors = arguments.choice(f"{owner}.vectors", vectors, VECTOR_RULES)
  orthogonalize = arguments.boolean(f"{owner}.orthogonalize", orthogonalize)
  normalize_output = arguments.boolean(f"{owner}.normalize_output", normalize_output)
  ns_steps = arguments.integer(f"{owner}.ns_steps", ns_steps, minimum=1)
  adam_multiplier = arguments.real(f"{owner}.adam_learning_rate_multiplier", adam_learning_rate_multiplier,
                                   minimum=0.0)
  adam_b1 = check_decay(f"{owner}.adam_b1", adam_b1)
  adam_b2 = check_decay(f"{owner}.adam_b2", adam_b2)
  weight_decay = arguments.real(f"{owner}.weight_decay", weight_decay, minimum=0.0)
  init = arguments.choice(f"{owner}.init", init, INITS)
  momentum_decays = arguments.reals(f"{owner}.momentum_decays", momentum_decays, minimum=0.0, maximum=1.0,
                                    open_maximum=True, allow_empty=False)
  rms_decay = check_decay(f"{owner}.rms_decay", rms_decay)
  factored_decays = arguments.reals(f"{owner}.factored_decays", factored_decays, minimum=0.0, maximum=1.0,
                                    open_maximum=True, allow_empty=False)
  sizes = (num_features(len(momentum_decays), len(factored_decays)), *hidden_sizes, 1)
  default_learning_rate, default_schedule = learning_rate, schedule
  pass_through = momentum_input_index(len(momentum_decays))

  def init_theta(key: PRNGKey) -> MetaParams:
    return {"mlp": _init_mlp(key, sizes, init, pass_through)}

  def optimizer(theta: MetaParams, *, num_steps: int | jax.Array, learning_rate: float | None = None,
                schedule: Callable[[jax.Array], jax.Array] | None = None) -> optax.GradientTransformationExtraArgs:
    """The harness for a run of ``num_steps`` updates; ``learning_rate`` or a whole ``schedule`` may be given."""
    peak = default_learning_rate if learning_rate is None else learning_rate
    lr = schedule or schedule_fn(default_schedule, peak, num_steps, warmup_fraction=warmup_fraction,
                                 final_fraction=final_fraction)
    learned = [scale_by_celo2(theta, orthogonalize=orthogonalize, normalize_output=normalize_output, ns_steps=ns_steps,
                              momentum_decays=momentum_decays, rms_decay=rms_decay, factored_decays=factored_decays)]
    if weight_decay:
      learned.append(optax.add_decayed_weights(weight_decay))
    learned.append(optax.scale_by_learning_rate(lr))
    branches = {"learned": optax.chain(*learned),
                "adamw": optax.adamw(lambda count: adam_multiplier * lr(count), b1=adam_b1, b2=adam_b2,
                                     weight_decay=weight_decay)}
    # The mask of a padded structure is split between the branches like the parameters; the outer wrapper zeroes
    # what the AdamW branch's weight decay would do to inactive entries.
    return masked_stats.masked_updates(optax.partition(branches, lambda params: route(params, vectors),
                                                       mask_compatible_extra_args=True))

  return LearnedOptimizer(name="celo2", init=init_theta, optimizer=optimizer)
