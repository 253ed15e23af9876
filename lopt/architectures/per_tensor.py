"""``per_tensor``: the hierarchical learned optimizer of Metz et al. 2020 (arXiv 2009.11243).

A per-tensor LSTM reads aggregated statistics of its tensor (log-RMS of parameter, gradient, momentum and second
moment; gradient-momentum alignment; rank and size), training- and validation-loss features, the progress
embedding and a summary of what the per-parameter MLP did at the previous step. It outputs a per-tensor context,
which enters the per-parameter MLP's first layer, and a per-tensor log step-size offset.

The per-parameter MLP is small (8 wide) and reads compact inputs (gradient and two momenta over a factored RMS,
normalised parameter); the step is

    update = -exp(log_step + lr_scale * lr_t) * exp(magnitude_scale * m) * (nominal + direction_scale * d)

with ``nominal`` a bias-corrected momentum over the factored RMS (Adafactor with momentum). The output layer and
the LSTM's step head start near zero, so the untrained optimizer is that nominal rule.

``update`` takes an optional keyword ``valid_loss``: the loss on an outer-validation batch (Metz et al. 2020).
Meta-training and evaluation feed it every ``valid_every`` inner steps (``reads_valid_loss`` is True); called
without it, as in a plain optax loop, the validation features are zero.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from lopt import arguments
from lopt.architectures import features, layers, masked_stats, tensor_lstm
from lopt.architectures.base import LearnedOptimizer, check_decay, check_step_arguments
from lopt.architectures.small_mlp import apply_small_mlp
from lopt.registry import register
from lopt.types import MetaParams, Params, PRNGKey

DECAYS = (0.9, 0.99)
NUM_PER_PARAM = len(DECAYS) + 2  # gradient, momenta, parameter


class PerTensorState(NamedTuple):
  """Optimizer state.

  Attributes:
    count: steps taken.
    momenta: per tensor, momenta stacked over ``DECAYS``.
    row, col: factored second moments.
    lstm_h, lstm_c: per tensor LSTM state, ``(hidden,)`` each.
    feedback: per tensor, mean |direction| and mean magnitude output of the MLP at the previous step.
    train_loss, valid_loss: running loss averages (``features.init_loss_state``).
  """

  count: jax.Array
  momenta: Params
  row: Params
  col: Params
  lstm_h: Params
  lstm_c: Params
  feedback: Params
  train_loss: dict
  valid_loss: dict


def num_lstm_inputs() -> int:
  """Per-tensor LSTM input size."""
  return (features.NUM_TENSOR_STATISTICS + features.NUM_SHAPE_FEATURES + 2 * features.num_loss_features() + 1
          + len(features.DEFAULT_TIMESCALES) + 2 + 2)


@register("architecture", "per_tensor")
def per_tensor(*, lstm_hidden: int = 32, context_size: int = 8, hidden_sizes: Sequence[int] = (8,),
               rms_decay: float = 0.999, initial_step: float = 1e-3, magnitude_scale: float = 0.1,
               direction_scale: float = 0.1, lr_scale: float = 0.1, output_init_scale: float = 1e-3,
               eps: float = 1e-8) -> LearnedOptimizer:
  """Hierarchical: per-tensor LSTM (tensor stats, train/valid loss) gives context to a per-parameter MLP."""
  owner = "architectures.per_tensor"
  lstm_hidden = arguments.integer(f"{owner}.lstm_hidden", lstm_hidden, minimum=1)
  context_size = arguments.integer(f"{owner}.context_size", context_size, minimum=1)
  hidden_sizes = arguments.integers(f"{owner}.hidden_sizes", hidden_sizes, minimum=1)
  rms_decay = check_decay(f"{owner}.rms_decay", rms_decay)
  initial_step, magnitude_scale, direction_scale, output_init_scale, eps = check_step_arguments(
      owner, initial_step, magnitude_scale, direction_scale, output_init_scale, eps)
  lr_scale = arguments.real(f"{owner}.lr_scale", lr_scale, minimum=0.0)
  num_shared = context_size + len(features.DEFAULT_TIMESCALES) + 2
  sizes = (NUM_PER_PARAM + num_shared, *hidden_sizes, 2)

  def init(key: PRNGKey) -> MetaParams:
    k_mlp, k_lstm, k_ctx = jax.random.split(key, 3)
    return {"mlp": layers.init_mlp(k_mlp, sizes, output_init_scale),
            "lstm": layers.init_lstm(k_lstm, num_lstm_inputs(), lstm_hidden),
            "context": jax.random.normal(k_ctx, (lstm_hidden, context_size), jnp.float32) / jnp.sqrt(lstm_hidden),
            "lr_head": jnp.zeros((lstm_hidden,), jnp.float32),
            "log_step": jnp.asarray(jnp.log(initial_step), jnp.float32)}

  def optimizer(theta: MetaParams, *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs:
    def init_state(params: Params) -> PerTensorState:
      return PerTensorState(
          count=jnp.zeros([], jnp.int32), **tensor_lstm.init_state(params, num_decays=len(DECAYS),
                                                                   lstm_hidden=lstm_hidden),
          feedback=jax.tree.map(lambda _: jnp.zeros((2,), jnp.float32), params),
          train_loss=features.init_loss_state(), valid_loss=features.init_loss_state())

    def update(grads, state: PerTensorState, params=None, *, loss=None, valid_loss=None, mask=None, **extra):
      del extra
      if params is None:
        raise ValueError("The per_tensor learned optimizer needs `params` in update(grads, state, params).")
      count = state.count + 1
      t = count.astype(jnp.float32)
      train_loss = features.update_loss_state(state.train_loss, loss)
      valid_state = features.update_loss_state(state.valid_loss, valid_loss)
      has_valid = jnp.ones([1], jnp.float32) if valid_loss is not None else jnp.zeros([1], jnp.float32)
      progress = features.progress_features(count, num_steps)
      shared = jnp.concatenate([features.loss_features(train_loss), features.loss_features(valid_state), has_valid,
                                progress])
      m_correction = 1.0 - DECAYS[0]**t
      rms_correction = jnp.sqrt(1.0 - rms_decay**t)

      treedef = jax.tree.structure(grads)
      flat = [treedef.flatten_up_to(x) for x in (grads, params, state.momenta, state.row, state.col,
                                                   state.lstm_h, state.lstm_c, state.feedback)]
      # Pass 1, per tensor: moments and the LSTM's inputs.
      masks = masked_stats.leaves(mask, treedef)
      moments, summaries = tensor_lstm.update_moments(*flat[:5], decays=DECAYS, rms_decay=rms_decay, masks=masks)
      lstm_inputs = jnp.concatenate(
          [summaries, jnp.broadcast_to(shared, (len(moments), shared.size)), jnp.stack(flat[7])], axis=1)
      # One batched LSTM step over all tensors.
      h, c = layers.lstm_step(theta["lstm"], lstm_inputs, jnp.stack(flat[5]), jnp.stack(flat[6]))
      context = jnp.tanh(h @ theta["context"])
      log_lr = theta["log_step"] + lr_scale * (h @ theta["lr_head"])
      biases = jax.vmap(lambda ctx: layers.shared_bias(theta["mlp"], NUM_PER_PARAM, jnp.concatenate(
          [ctx, progress])))(context)

      # Pass 2, per parameter: the MLP with the tensor's context as a first-layer bias.
      updates, feedback = [], []
      for i, (g, p) in enumerate(zip(flat[0], flat[1])):
        inputs, nominal = tensor_lstm.mlp_inputs(g, p, moments[i], rms_correction=rms_correction,
                                                 m_correction=m_correction, eps=eps, mask=masks[i])
        d, mag = apply_small_mlp(theta["mlp"], inputs, biases[i])
        step = -jnp.exp(log_lr[i]) * features.bounded_exp(magnitude_scale * mag) * (nominal + direction_scale * d)
        updates.append(masked_stats.zero_inactive(step, masks[i]).astype(p.dtype))
        feedback.append(jnp.stack([masked_stats.mean(jnp.abs(d), masks[i]), masked_stats.mean(mag, masks[i])]))
      unflat = treedef.unflatten
      new_state = PerTensorState(
          count=count, momenta=unflat([x[0] for x in moments]), row=unflat([x[1] for x in moments]),
          col=unflat([x[2] for x in moments]), lstm_h=unflat(list(h)), lstm_c=unflat(list(c)),
          feedback=unflat(feedback), train_loss=train_loss, valid_loss=valid_state)
      return unflat(updates), new_state

    return optax.GradientTransformationExtraArgs(init_state, update)

  return LearnedOptimizer(name="per_tensor", init=init, optimizer=optimizer, reads_valid_loss=True)
