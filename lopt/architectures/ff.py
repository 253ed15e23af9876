"""``ff`` and ``ff_small``: per-parameter MLP learned optimizers (Metz et al. 2019/2022, arXiv 2203.11860).

For each scalar parameter a small MLP reads per-tensor-normalised features and outputs a direction ``d`` and a
magnitude ``m``. The step is

    update = -exp(log_step) * exp(magnitude_scale * m) * (nominal + direction_scale * d)

where ``nominal`` is a bias-corrected Adam direction (``ff``) or momentum over a factored second moment
(``ff_small``). With the MLP's output layer initialised near zero, the untrained optimizer is that nominal rule with
step ``exp(log_step)``: meta-training starts from a working optimizer and learns corrections to it, instead of
starting from the near-constant drift of a randomly initialised MLP.

Inputs shared by a whole tensor (the progress embedding) enter the first layer as a bias rather than being
broadcast to every parameter (see ``layers.apply_mlp``).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from lopt.architectures import chunking, features, layers
from lopt.architectures.base import LearnedOptimizer
from lopt.architectures.small_mlp import apply_small_mlp
from lopt.registry import register
from lopt.types import MetaParams, Params, PRNGKey


class FFState(NamedTuple):
  """Optimizer state: step count, momenta (stacked over decays per tensor) and second moments."""

  count: jax.Array
  momenta: Params
  rms: Params


def _split_leaves(grads, results, n: int) -> list:
  """Turns a tree of n-tuples (one per leaf) into n trees shaped like ``grads``."""
  treedef = jax.tree.structure(grads)
  leaves = treedef.flatten_up_to(results)
  return [treedef.unflatten([leaf[i] for leaf in leaves]) for i in range(n)]


@register("architecture", "ff")
def ff(*, hidden_sizes: Sequence[int] = (32, 32), decays: Sequence[float] = features.DEFAULT_DECAYS,
       rms_decay: float = 0.999, initial_step: float = 1e-3, magnitude_scale: float = 0.1,
       direction_scale: float = 0.1, output_init_scale: float = 1e-3, eps: float = 1e-8,
       chunk_size: int = chunking.DEFAULT_CHUNK_SIZE) -> LearnedOptimizer:
  """Per-parameter MLP over normalised gradient, momentum and progress features (Adam-initialised)."""
  decays = tuple(float(d) for d in decays)
  nominal_index = min(range(len(decays)), key=lambda i: abs(decays[i] - 0.9))
  num_per_param = features.num_per_parameter_features(len(decays))
  num_inputs = num_per_param + len(features.DEFAULT_TIMESCALES) + 2
  sizes = (num_inputs, *hidden_sizes, 2)

  def init(key: PRNGKey) -> MetaParams:
    return {"mlp": layers.init_mlp(key, sizes, output_init_scale),
            "log_step": jnp.asarray(jnp.log(initial_step), jnp.float32)}

  def optimizer(theta: MetaParams, *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs:
    decay_array = jnp.asarray(decays, jnp.float32)

    def init_state(params: Params) -> FFState:
      return FFState(
          count=jnp.zeros([], jnp.int32),
          momenta=jax.tree.map(lambda p: jnp.zeros((len(decays),) + p.shape, jnp.float32), params),
          rms=jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))

    def update(grads, state: FFState, params=None, *, loss=None, **extra):
      del loss, extra  # ff reads no loss features.
      if params is None:
        raise ValueError("The ff learned optimizer needs `params` in update(grads, state, params).")
      count = state.count + 1
      progress = features.progress_features(count, num_steps)
      progress_bias = layers.shared_bias(theta["mlp"], num_per_param, progress)
      nominal_correction = 1.0 - decays[nominal_index] ** count.astype(jnp.float32)
      rms_correction = 1.0 - rms_decay ** count.astype(jnp.float32)
      step_size = jnp.exp(theta["log_step"])

      def leaf_update(g, p, m, v):
        m, v = features.update_moments(m, v, g.astype(jnp.float32), decay_array, rms_decay)
        momenta = list(m)
        scales = features.feature_scales(features.raw_parameter_features(p, g, momenta, v, eps), eps)

        def per_parameter(x):  # x: (3 + num_decays, n), rows p, g, v, momenta
          p_, g_, v_, *m_ = list(x)
          raw = features.raw_parameter_features(p_, g_, m_, v_, eps)
          out = layers.apply_mlp_t(theta["mlp"], jnp.stack(raw) * scales[:, None], progress_bias)
          nominal = (m_[nominal_index] / nominal_correction) / (jnp.sqrt(v_ / rms_correction) + eps)
          step = -step_size * features.bounded_exp(magnitude_scale * out[1]) * (nominal + direction_scale * out[0])
          return step[None]

        (step,) = chunking.map_in_chunks(per_parameter, [p, g, v, *momenta], 1, chunk_size=chunk_size)
        return step.astype(p.dtype), m, v

      results = jax.tree.map(leaf_update, grads, params, state.momenta, state.rms)
      updates, momenta, rms = _split_leaves(grads, results, 3)
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

    def update(grads, state: FFSmallState, params=None, *, loss=None, **extra):
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

      def leaf_update(g, p, m, row, col):
        g = features.clip_gradient(g)
        m = b1 * m + (1.0 - b1) * g
        row, col = features.update_factored(row, col, jnp.square(g), b2)
        inv_rms = features.factored_rsqrt(row, col, g.shape) * v_correction
        inv_rms = jnp.minimum(inv_rms, 1.0 / eps)
        g_n, m_n = g * inv_rms, m * inv_rms
        p32 = p.astype(jnp.float32)
        p_n = p32 * jax.lax.rsqrt(jnp.mean(jnp.square(p32)) + 1e-30)
        d, mag = apply_small_mlp(theta["mlp"], [g_n, m_n, p_n], progress_bias)
        nominal = m_n / m_correction
        step = -step_size * features.bounded_exp(magnitude_scale * mag) * (nominal + direction_scale * d)
        return step.astype(p.dtype), m, row, col

      results = jax.tree.map(leaf_update, grads, params, state.momentum, state.row, state.col)
      updates, momentum, row, col = _split_leaves(grads, results, 4)
      return updates, FFSmallState(count=count, momentum=momentum, row=row, col=col)

    return optax.GradientTransformationExtraArgs(init_state, update)

  return LearnedOptimizer(name="ff_small", init=init, optimizer=optimizer)
