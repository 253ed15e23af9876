"""``lstm_hyper``: the VeLO design (Metz et al. 2022, arXiv 2211.09760), scaled down.

Per tensor, an LSTM reads tensor statistics, loss features (running averages of the training loss, normalised),
the progress embedding (fraction of ``num_steps`` done) and the tensor's rank and size. Its outputs are

  * mixing coefficients (a softmax) over a bank of ``num_weight_sets`` small per-parameter MLP weight sets: the
    tensor's MLP is their mixture, a hypernetwork at the cost of one small weighted sum per tensor;
  * a per-tensor log step-size multiplier.

The per-parameter MLP (4 wide) reads compact inputs (gradient and two momenta over a factored RMS, normalised
parameter). As in VeLO the step is relative to the parameter scale:

    update = -exp(log_step + step_scale * s_t) * (rms(param) + rms_floor) * exp(magnitude_scale * m)
             * (nominal + direction_scale * d)

``nominal`` is bias-corrected momentum over the factored RMS. The bank's output layers and the step head start
near zero and the mixing logits at zero, so the untrained optimizer is that nominal rule with a relative step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.architectures import features, layers, tensor_lstm
from lopt.architectures.base import LearnedOptimizer
from lopt.architectures.small_mlp import apply_small_mlp
from lopt.registry import register
from lopt.types import MetaParams, Params, PRNGKey

DECAYS = (0.9, 0.99)
NUM_PER_PARAM = len(DECAYS) + 2


class LSTMHyperState(NamedTuple):
  """Optimizer state: count, momenta (stacked over ``DECAYS``), factored second moments, per-tensor LSTM state
  and running loss averages."""

  count: jax.Array
  momenta: Params
  row: Params
  col: Params
  lstm_h: Params
  lstm_c: Params
  train_loss: dict


def num_lstm_inputs() -> int:
  """Per-tensor LSTM input size."""
  return (features.NUM_TENSOR_STATISTICS + features.NUM_SHAPE_FEATURES + features.num_loss_features()
          + len(features.DEFAULT_TIMESCALES) + 2)


@register("architecture", "lstm_hyper")
def lstm_hyper(*, lstm_hidden: int = 32, num_weight_sets: int = 8, mlp_hidden: int = 4, rms_decay: float = 0.999,
               initial_step: float = 1e-2, rms_floor: float = 0.1, magnitude_scale: float = 0.1,
               direction_scale: float = 0.1, step_scale: float = 0.1, output_init_scale: float = 1e-3,
               eps: float = 1e-8) -> LearnedOptimizer:
  """VeLO-style: per-tensor LSTM mixes a bank of small per-parameter MLPs and sets a per-tensor step size."""
  sizes = (NUM_PER_PARAM, mlp_hidden, 2)

  def init(key: PRNGKey) -> MetaParams:
    k_bank, k_lstm = jax.random.split(key)
    bank = jax.vmap(lambda k: layers.init_mlp(k, sizes, output_init_scale))(
        jax.random.split(k_bank, num_weight_sets))
    return {"bank": bank, "lstm": layers.init_lstm(k_lstm, num_lstm_inputs(), lstm_hidden),
            "mix_head": jnp.zeros((lstm_hidden, num_weight_sets), jnp.float32),
            "step_head": jnp.zeros((lstm_hidden,), jnp.float32),
            "log_step": jnp.asarray(jnp.log(initial_step), jnp.float32)}

  def optimizer(theta: MetaParams, *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs:
    def init_state(params: Params) -> LSTMHyperState:
      return LSTMHyperState(
          count=jnp.zeros([], jnp.int32), **tensor_lstm.init_state(params, num_decays=len(DECAYS),
                                                                   lstm_hidden=lstm_hidden),
          train_loss=features.init_loss_state())

    def update(grads, state: LSTMHyperState, params=None, *, loss=None, **extra):
      del extra
      if params is None:
        raise ValueError("The lstm_hyper learned optimizer needs `params` in update(grads, state, params).")
      count = state.count + 1
      t = count.astype(jnp.float32)
      train_loss = features.update_loss_state(state.train_loss, loss)
      shared = jnp.concatenate([features.loss_features(train_loss), features.progress_features(count, num_steps)])
      m_correction = 1.0 - DECAYS[0]**t
      rms_correction = jnp.sqrt(1.0 - rms_decay**t)

      treedef = jax.tree.structure(grads)
      flat = [treedef.flatten_up_to(x) for x in (grads, params, state.momenta, state.row, state.col,
                                                   state.lstm_h, state.lstm_c)]
      moments, summaries = tensor_lstm.update_moments(*flat[:5], decays=DECAYS, rms_decay=rms_decay)
      lstm_inputs = jnp.concatenate([summaries, jnp.broadcast_to(shared, (len(moments), shared.size))], axis=1)
      h, c = layers.lstm_step(theta["lstm"], lstm_inputs, jnp.stack(flat[5]), jnp.stack(flat[6]))
      mix = jax.nn.softmax(h @ theta["mix_head"], axis=-1)  # (num_tensors, num_weight_sets)
      # The hypernetwork: each tensor's MLP weights are a mixture of the bank's.
      mixed = jax.tree.map(lambda w: jnp.tensordot(mix, w, axes=1), theta["bank"])
      log_lr = theta["log_step"] + step_scale * (h @ theta["step_head"])

      updates = []
      for i, (g, p) in enumerate(zip(flat[0], flat[1])):
        inputs, nominal = tensor_lstm.mlp_inputs(g, p, moments[i], rms_correction=rms_correction,
                                                 m_correction=m_correction, eps=eps)
        tensor_mlp = jax.tree.map(lambda w: w[i], mixed)
        d, mag = apply_small_mlp(tensor_mlp, inputs)
        p32 = p.astype(jnp.float32)
        scale = jnp.exp(log_lr[i]) * (jnp.sqrt(jnp.mean(jnp.square(p32)) + 1e-30) + rms_floor)
        step = -scale * features.bounded_exp(magnitude_scale * mag) * (nominal + direction_scale * d)
        updates.append(step.astype(p.dtype))
      unflat = treedef.unflatten
      new_state = LSTMHyperState(
          count=count, momenta=unflat([x[0] for x in moments]), row=unflat([x[1] for x in moments]),
          col=unflat([x[2] for x in moments]), lstm_h=unflat(list(h)), lstm_c=unflat(list(c)),
          train_loss=train_loss)
      return unflat(updates), new_state

    return optax.GradientTransformationExtraArgs(init_state, update)

  return LearnedOptimizer(name="lstm_hyper", init=init, optimizer=optimizer)
