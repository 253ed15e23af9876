"""``ff`` and ``ff_small``: per-parameter MLP learned optimizers (Metz et al. 2019/2022, arXiv 2203.11860).

For each scalar parameter a small MLP reads per-tensor-normalised features and outputs a direction ``d`` and a
magnitude ``m``. The step is

    update = -exp(log_step) * exp(magnitude_scale * m) * (nominal + direction_scale * d)

where ``nominal`` is a bias-corrected Adam direction (``ff``) or momentum over a factored second moment
(``ff_small``). With the MLP's output layer initialised near zero, the untrained optimizer is that nominal rule with
step ``exp(log_step)``: meta-training starts from a working optimizer and learns corrections to it, instead of
starting from the near-constant drift of a randomly initialised MLP.

With ``normalize_update`` (Celo2, arXiv 2025) each tensor's update is divided by its RMS, so the step size alone sets
how far a tensor moves.

Neither reads the loss: ``update`` accepts ``loss=`` (and any other extra argument, e.g. ``valid_loss=``) and
ignores it, so the step depends only on gradients, parameters, the optimizer state and progress
(``reads_valid_loss`` is False: inner loops never compute a validation loss for it). ``per_tensor`` and
``lstm_hyper`` are the architectures with loss features.

Inputs shared by a whole tensor (the progress embedding) enter the first layer as a bias rather than being
broadcast to every parameter (see ``layers.apply_mlp``).

Speed. ``ff``'s features need only two reductions per tensor (``features.feature_scales``); everything else,
features, MLP and step, is elementwise in the parameters. A small MLP is then written as elementwise arithmetic
(``small_mlp.py``), which XLA fuses with the features into one loop over each tensor: no per-parameter
intermediate ever reaches memory. A wide MLP (more than ``ELEMENTWISE_MAX_MULTIPLIES`` multiply-adds per parameter,
e.g. 32x32) would make that loop too large to compile quickly; it is evaluated as matrix multiplies over chunks of
parameters instead (``chunking.py``), the same function at a higher cost per step.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from lopt import arguments
from lopt.architectures import chunking, features, layers, masked_stats
from lopt.architectures.base import LearnedOptimizer, check_decay, check_step_arguments
from lopt.architectures.small_mlp import apply_small_mlp
from lopt.arguments import ArgumentError
from lopt.registry import register
from lopt.types import MetaParams, Params, PRNGKey

# Above this many multiply-adds per parameter (summed over the per-parameter layers) the elementwise form takes
# minutes and gigabytes to compile: 464 (18-16-16-2) compiles in ~10 s, 1440 (18-32-32-2) ran out of 8 GB.
ELEMENTWISE_MAX_MULTIPLIES = 512
DEFAULT_HIDDEN_SIZES = (8, 8)
# Keeps the per-tensor normalisation finite for an all-zero update (a zero gradient from the first step).
NORMALIZE_EPS = 1e-12


class FFState(NamedTuple):
  """Optimizer state: step count, momenta (one tree per decay) and second moments."""

  count: jax.Array
  momenta: tuple[Params, ...]
  rms: Params


def _split_leaves(grads, results, n: int) -> list:
  """Turns a tree of n-tuples (one per leaf) into n trees shaped like ``grads``."""
  treedef = jax.tree.structure(grads)
  leaves = treedef.flatten_up_to(results)
  return [treedef.unflatten([leaf[i] for leaf in leaves]) for i in range(n)]


def mlp_multiplies(sizes: Sequence[int]) -> int:
  """Multiply-adds per parameter of a per-parameter MLP with layer ``sizes`` (per-parameter inputs first)."""
  return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


@register("architecture", "ff")
def ff(*, hidden_sizes: Sequence[int] = DEFAULT_HIDDEN_SIZES, decays: Sequence[float] = features.DEFAULT_DECAYS,
       rms_decay: float = 0.999, initial_step: float = 1e-3, magnitude_scale: float = 0.1,
       direction_scale: float = 0.1, output_init_scale: float = 1e-3, eps: float = 1e-8,
       evaluation: str = "auto", chunk_size: int = chunking.DEFAULT_CHUNK_SIZE,
       normalize_update: bool = False) -> LearnedOptimizer:
  """Per-parameter MLP over normalised parameter, gradient, momentum and progress features (Adam-initialised).

  Args:
    hidden_sizes: widths of the per-parameter MLP's hidden layers.
    decays: momentum decays; the one nearest 0.9 gives the nominal (Adam) direction.
    rms_decay: decay of the squared-gradient average.
    initial_step: the untrained optimizer's step size (theta's ``log_step``).
    magnitude_scale, direction_scale: how strongly the MLP's outputs enter the step.
    output_init_scale: scale of the MLP's initial output layer (near zero: start as Adam).
    eps: Adam's epsilon.
    evaluation: ``"elementwise"`` (one fused loop, fast for small MLPs), ``"matmul"`` (chunked matrix
      multiplies) or ``"auto"``: elementwise up to ``ELEMENTWISE_MAX_MULTIPLIES`` multiply-adds per parameter.
    chunk_size: parameters per chunk of the matmul evaluation.
    normalize_update: Celo2-style: divide each tensor's update direction by its root mean square before the step
      size, so every tensor moves by ``exp(log_step)`` in RMS whatever the scale of its gradients or of the MLP's
      outputs (a per-tensor trust region that keeps unusual tasks from blowing up).
  """
  owner = "architectures.ff"
  hidden_sizes = arguments.integers(f"{owner}.hidden_sizes", hidden_sizes, minimum=1)
  decays = arguments.reals(f"{owner}.decays", decays, minimum=0.0, maximum=1.0, open_maximum=True,
                           allow_empty=False)
  rms_decay = check_decay(f"{owner}.rms_decay", rms_decay)
  initial_step, magnitude_scale, direction_scale, output_init_scale, eps = check_step_arguments(
      owner, initial_step, magnitude_scale, direction_scale, output_init_scale, eps)
  evaluation = arguments.choice(f"{owner}.evaluation", evaluation, ("auto", "elementwise", "matmul"))
  chunk_size = arguments.integer(f"{owner}.chunk_size", chunk_size, minimum=1)
  if not isinstance(normalize_update, bool):
    raise ArgumentError("architectures.ff.normalize_update", f"must be True or False, got {normalize_update!r}.")
  nominal_index = min(range(len(decays)), key=lambda i: abs(decays[i] - 0.9))
  num_per_param = features.num_per_parameter_features(len(decays))
  num_inputs = num_per_param + len(features.DEFAULT_TIMESCALES) + 2
  sizes = (num_inputs, *hidden_sizes, 2)
  if evaluation == "auto":
    evaluation = "elementwise" if mlp_multiplies((num_per_param, *sizes[1:])) <= ELEMENTWISE_MAX_MULTIPLIES \
        else "matmul"

  def init(key: PRNGKey) -> MetaParams:
    return {"mlp": layers.init_mlp(key, sizes, output_init_scale),
            "log_step": jnp.asarray(jnp.log(initial_step), jnp.float32)}

  def optimizer(theta: MetaParams, *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs:

    def init_state(params: Params) -> FFState:
      zeros = lambda: jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
      return FFState(count=jnp.zeros([], jnp.int32), momenta=tuple(zeros() for _ in decays), rms=zeros())

    def update(grads, state: FFState, params=None, *, loss=None, mask=None, **extra):
      del loss, extra  # ff reads no loss features.
      if params is None:
        raise ValueError("The ff learned optimizer needs `params` in update(grads, state, params).")
      count = state.count + 1
      t = count.astype(jnp.float32)
      progress_bias = layers.shared_bias(theta["mlp"], num_per_param, features.progress_features(count, num_steps))
      nominal_correction = 1.0 - decays[nominal_index]**t
      rms_correction = 1.0 - rms_decay**t
      step_size = jnp.exp(theta["log_step"])

      def mlp(inputs: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
        if evaluation == "elementwise":
          d, mag = apply_small_mlp(theta["mlp"], inputs, progress_bias)
          return d, mag
        out = layers.apply_mlp_t(theta["mlp"], jnp.stack(inputs), progress_bias)
        return out[0], out[1]

      def leaf_update(g, p, momenta, v, active):
        g = features.clip_gradient(g)
        momenta, v = features.update_moments(momenta, v, g, decays, rms_decay)
        scales = features.feature_scales(p, g, momenta, v, eps, mask=active)

        def step(p_, g_, v_, *momenta_):  # elementwise: a whole tensor or one chunk of it
          raw = features.per_parameter_features(p_, g_, momenta_, v_, eps)
          d, mag = mlp([x * scales[i] for i, x in enumerate(raw)])
          nominal = (momenta_[nominal_index] / nominal_correction) / (jnp.sqrt(v_ / rms_correction) + eps)
          return features.bounded_exp(magnitude_scale * mag) * (nominal + direction_scale * d)

        if evaluation == "elementwise":
          u = step(p, g, v, *momenta)
        else:
          (u,) = chunking.map_in_chunks(lambda xs: [step(*xs)], [p.astype(jnp.float32), g, v, *momenta],
                                        chunk_size=chunk_size)
        u = masked_stats.zero_inactive(u, active)
        if normalize_update:  # one reduction per tensor, after the fused elementwise loop
          u = u * jax.lax.rsqrt(masked_stats.mean(jnp.square(u), active) + NORMALIZE_EPS)
        u = -step_size * u
        return u.astype(p.dtype), tuple(momenta), v

      treedef = jax.tree.structure(grads)
      per_leaf_momenta = treedef.unflatten(zip(*(treedef.flatten_up_to(m) for m in state.momenta)))
      masks = treedef.unflatten(masked_stats.leaves(mask, treedef))
      results = jax.tree.map(leaf_update, grads, params, per_leaf_momenta, state.rms, masks)
      updates, momenta, rms = _split_leaves(grads, results, 3)
      momenta = tuple(_split_leaves(grads, momenta, len(decays)))
      return updates, FFState(count=count, momenta=momenta, rms=rms)

    return optax.GradientTransformationExtraArgs(init_state, update)

  return LearnedOptimizer(name="ff", init=init, optimizer=optimizer)


class FFSmallState(NamedTuple):
  """Optimizer state: step count, one momentum per parameter, factored second moments (row, column)."""

  count: jax.Array
  momentum: Params
  row: Params
  col: Params


def _logit(p: float) -> jax.Array:
  return jnp.asarray(jnp.log(p) - jnp.log1p(-p), jnp.float32)


@register("architecture", "ff_small")
def ff_small(*, hidden_sizes: Sequence[int] = (4,), momentum_decay: float = 0.9, rms_decay: float = 0.999,
             initial_step: float = 1e-3, magnitude_scale: float = 0.1, direction_scale: float = 0.1,
             output_init_scale: float = 1e-3, eps: float = 1e-8) -> LearnedOptimizer:
  """Compute-efficient per-parameter MLP (4-wide) over factored second-moment features; learnable decays.

  Per parameter it keeps one momentum; matrices keep Adafactor-style row and column second moments instead of a
  full one, so the state is ~1 float per parameter. Inputs: gradient and momentum divided by the factored RMS and
  the tensor-normalised parameter; the progress embedding enters as a first-layer bias.
  """
  owner = "architectures.ff_small"
  hidden_sizes = arguments.integers(f"{owner}.hidden_sizes", hidden_sizes, minimum=1)
  # theta holds the decays' logits, so 0 is out too.
  momentum_decay = check_decay(f"{owner}.momentum_decay", momentum_decay, open_minimum=True)
  rms_decay = check_decay(f"{owner}.rms_decay", rms_decay, open_minimum=True)
  initial_step, magnitude_scale, direction_scale, output_init_scale, eps = check_step_arguments(
      owner, initial_step, magnitude_scale, direction_scale, output_init_scale, eps)
  num_per_param = 3
  sizes = (num_per_param + len(features.DEFAULT_TIMESCALES) + 2, *hidden_sizes, 2)

  def init(key: PRNGKey) -> MetaParams:
    return {"mlp": layers.init_mlp(key, sizes, output_init_scale),
            "log_step": jnp.asarray(jnp.log(initial_step), jnp.float32),
            "momentum_logit": _logit(momentum_decay), "rms_logit": _logit(rms_decay)}

  def optimizer(theta: MetaParams, *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs:
    b1 = jax.nn.sigmoid(theta["momentum_logit"])
    b2 = jax.nn.sigmoid(theta["rms_logit"])

    def init_state(params: Params) -> FFSmallState:
      shapes = jax.tree.map(lambda p: features.factored_shapes(p.shape), params)
      is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and all(isinstance(s, tuple) for s in x)
      return FFSmallState(
          count=jnp.zeros([], jnp.int32),
          momentum=jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
          row=jax.tree.map(lambda s: jnp.zeros(s[0], jnp.float32), shapes, is_leaf=is_pair),
          col=jax.tree.map(lambda s: jnp.zeros(s[1], jnp.float32), shapes, is_leaf=is_pair))

    def update(grads, state: FFSmallState, params=None, *, loss=None, mask=None, **extra):
      del loss, extra
      if params is None:
        raise ValueError("The ff_small learned optimizer needs `params` in update(grads, state, params).")
      count = state.count + 1
      t = count.astype(jnp.float32)
      progress = features.progress_features(count, num_steps)
      progress_bias = layers.shared_bias(theta["mlp"], num_per_param, progress)
      m_correction = 1.0 - b1**t
      # Bias correction of the second moment: rsqrt scales by sqrt(1 - b2^t).
      v_correction = jnp.sqrt(1.0 - b2**t)
      step_size = jnp.exp(theta["log_step"])

      def leaf_update(g, p, m, row, col, active):
        g = features.clip_gradient(g)
        m = b1 * m + (1.0 - b1) * g
        row, col = features.update_factored(row, col, jnp.square(g), b2, mask=active)
        inv_rms = features.factored_rsqrt(row, col, g.shape, mask=active) * v_correction
        inv_rms = jnp.minimum(inv_rms, 1.0 / eps)
        g_n, m_n = g * inv_rms, m * inv_rms
        p32 = p.astype(jnp.float32)
        p_n = p32 * jax.lax.rsqrt(masked_stats.mean(jnp.square(p32), active) + 1e-30)
        d, mag = apply_small_mlp(theta["mlp"], [g_n, m_n, p_n], progress_bias)
        nominal = m_n / m_correction
        step = -step_size * features.bounded_exp(magnitude_scale * mag) * (nominal + direction_scale * d)
        return masked_stats.zero_inactive(step, active).astype(p.dtype), m, row, col

      treedef = jax.tree.structure(grads)
      masks = treedef.unflatten(masked_stats.leaves(mask, treedef))
      results = jax.tree.map(leaf_update, grads, params, state.momentum, state.row, state.col, masks)
      updates, momentum, row, col = _split_leaves(grads, results, 4)
      return updates, FFSmallState(count=count, momentum=momentum, row=row, col=col)

    return optax.GradientTransformationExtraArgs(init_state, update)

  return LearnedOptimizer(name="ff_small", init=init, optimizer=optimizer)
