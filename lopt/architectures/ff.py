"""``ff``: the per-parameter MLP learned optimizer (Metz et al. 2019/2022, arXiv 2203.11860).

For each scalar parameter a small MLP reads per-tensor-normalised features (parameter, gradient, momenta at several
decays, second moment and ratios, a training-progress embedding) and outputs a direction ``d`` and a magnitude
``m``. The step is

    update = -exp(log_step) * exp(magnitude_scale * m) * (nominal + direction_scale * d)

where ``nominal`` is a bias-corrected Adam direction. With the MLP's output layer initialised near zero, the
untrained optimizer is Adam with step ``exp(log_step)``: meta-training starts from a working optimizer and learns
corrections to it, instead of starting from the near-constant drift of a randomly initialised MLP.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from lopt.architectures import features
from lopt.architectures.base import LearnedOptimizer
from lopt.registry import register
from lopt.types import MetaParams, Params, PRNGKey


class FFState(NamedTuple):
  """Optimizer state: step count, momenta (stacked over decays per tensor) and second moments."""

  count: jax.Array
  momenta: Params
  rms: Params


def _init_mlp(key: PRNGKey, sizes: Sequence[int], output_init_scale: float) -> list[dict[str, jax.Array]]:
  layers = []
  keys = jax.random.split(key, len(sizes) - 1)
  for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
    last = i == len(sizes) - 2
    scale = output_init_scale if last else jnp.sqrt(2.0 / n_in)
    layers.append({"w": jax.random.normal(k, (n_in, n_out), jnp.float32) * scale,
                   "b": jnp.zeros((n_out,), jnp.float32)})
  return layers


def _apply_mlp(layers: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
  for layer in layers[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ layers[-1]["w"] + layers[-1]["b"]


@register("architecture", "ff")
def ff(*, hidden_sizes: Sequence[int] = (32, 32), decays: Sequence[float] = features.DEFAULT_DECAYS,
       rms_decay: float = 0.999, initial_step: float = 1e-3, magnitude_scale: float = 0.1,
       direction_scale: float = 0.1, output_init_scale: float = 1e-3, eps: float = 1e-8) -> LearnedOptimizer:
  """Per-parameter MLP over normalised gradient, momentum and progress features (Adam-initialised)."""
  decays = tuple(float(d) for d in decays)
  nominal_index = min(range(len(decays)), key=lambda i: abs(decays[i] - 0.9))
  num_inputs = features.num_per_parameter_features(len(decays)) + len(features.DEFAULT_TIMESCALES) + 2
  sizes = (num_inputs, *hidden_sizes, 2)

  def init(key: PRNGKey) -> MetaParams:
    return {"mlp": _init_mlp(key, sizes, output_init_scale),
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
      nominal_correction = 1.0 - decays[nominal_index] ** count.astype(jnp.float32)
      rms_correction = 1.0 - rms_decay ** count.astype(jnp.float32)
      step_size = jnp.exp(theta["log_step"])

      def leaf_update(g, p, m, v):
        m, v = features.update_moments(m, v, g.astype(jnp.float32), decay_array, rms_decay)
        feats = features.per_parameter_features(p, g, m, v, eps)
        feats = jnp.concatenate([feats, jnp.broadcast_to(progress, p.shape + progress.shape)], axis=-1)
        out = _apply_mlp(theta["mlp"], feats)
        nominal = (m[nominal_index] / nominal_correction) / (jnp.sqrt(v / rms_correction) + eps)
        step = -step_size * jnp.exp(magnitude_scale * out[..., 1]) * (nominal + direction_scale * out[..., 0])
        return step.astype(p.dtype), m, v

      flat_updates = jax.tree.map(leaf_update, grads, params, state.momenta, state.rms)
      treedef = jax.tree.structure(grads)
      leaves = treedef.flatten_up_to(flat_updates)
      updates = treedef.unflatten([u for u, _, _ in leaves])
      momenta = treedef.unflatten([m for _, m, _ in leaves])
      rms = treedef.unflatten([v for _, _, v in leaves])
      return updates, FFState(count=count, momenta=momenta, rms=rms)

    return optax.GradientTransformationExtraArgs(init_state, update)

  return LearnedOptimizer(name="ff", init=init, optimizer=optimizer)
