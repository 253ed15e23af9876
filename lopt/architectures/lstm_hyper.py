"""``lstm_hyper``: VeLO's hypernetwork (Metz et al. 2022, arXiv 2211.09760).

Per step, for every tensor of the model:

  1. Its LSTM input (``velo_features``: progress embedding, loss features, momentum and second-moment statistics,
     rank) is projected to the LSTM width, and a *global context* is added: ``max`` over all tensors of
     ``relu(projection_c(input))``, so each tensor's LSTM sees what the whole model is doing.
  2. One LSTM step (batched over tensors). Two linear heads read its output: ``num_weight_sets`` unconstrained
     mixing coefficients ``c`` and a per-tensor step-size multiplier ``s``.
  3. The tensor's per-parameter MLP is ``sum_k c_k W_k`` over a bank of ``num_weight_sets`` weight sets (VeLO: a
     2-hidden-layer, 4-wide MLP). It reads VeLO's ~30 per-parameter features, each normalised to RMS 1 over the
     tensor, and outputs a direction ``d`` and a log-magnitude ``m``; the update is

       update = -exp(log_step) * s * rms(param) * d * exp(magnitude_scale * m)

     with no hand-designed nominal step and no floor on ``rms(param)``.

Initialisation. VeLO starts from random weights; here the untrained optimizer must already train, so every weight
set of the bank starts with a ReLU identity pair from the ``m_0 / sqrt(v)`` feature to ``d`` (``d = relu(x) -
relu(-x)``, through every hidden layer) plus small random weights (``bank_init_scale``), the mixing head starts at
``c_k = 1 / num_weight_sets`` (the bank's mean) and the step head at ``s = 1``. Untrained it is a relative,
per-tensor-normalised Adam step of ``initial_step`` times the parameter RMS; meta-training may move any of it.

``preset`` picks the sizes: ``"small"`` (CPU: LSTM 32, bank 8) or ``"velo"`` (the paper's LSTM 512, bank 256);
``lstm_hidden`` / ``num_weight_sets`` override either.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt import arguments
from lopt.architectures import features, layers, masked_stats, velo_features
from lopt.architectures.base import LearnedOptimizer
from lopt.architectures.small_mlp import apply_small_mlp
from lopt.registry import register
from lopt.types import MetaParams, Params, PRNGKey

PRESETS: dict[str, dict[str, int]] = {"small": {"lstm_hidden": 32, "num_weight_sets": 8},
                                      "velo": {"lstm_hidden": 512, "num_weight_sets": 256}}


class LSTMHyperState(NamedTuple):
  """Optimizer state: count; momenta (one tree per decay), second moment, factored row/column second
  moments (stacked over factored decays); per-tensor LSTM state; the loss buffer."""

  count: jax.Array
  momenta: tuple[Params, ...]
  rms: Params
  rows: Params
  cols: Params
  lstm_h: Params
  lstm_c: Params
  loss: dict


def num_lstm_inputs(num_momenta: int) -> int:
  """Per-tensor LSTM input size (before the projection to the LSTM width)."""
  return (len(velo_features.PROGRESS_POINTS) + velo_features.num_loss_features()
          + velo_features.num_tensor_inputs(num_momenta))


def _init_bank(key: PRNGKey, sizes: tuple[int, ...], direction_feature: int, noise: float) -> list[dict]:
  """One weight set: small random weights plus the ReLU identity pair carrying ``direction_feature`` to output 0."""
  out = []
  keys = jax.random.split(key, len(sizes) - 1)
  for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
    w = noise * jax.random.normal(k, (n_in, n_out), jnp.float32) / jnp.sqrt(n_in)
    if i == 0:
      w = w.at[direction_feature, 0].add(1.0).at[direction_feature, 1].add(-1.0)
    elif i < len(sizes) - 2:
      w = w.at[0, 0].add(1.0).at[1, 1].add(1.0)
    else:
      w = w.at[0, 0].add(1.0).at[1, 0].add(-1.0)
    out.append({"w": w, "b": jnp.zeros((n_out,), jnp.float32)})
  return out


def _first_layer(layer: dict, feats: list[jax.Array], shape: tuple[int, ...]) -> list[jax.Array]:
  """Pre-activations of the MLP's first layer, one array per unit. Features of the tensor's full shape are summed
  elementwise; the others (row and column statistics at broadcastable shapes) are summed per shape on their small
  arrays and broadcast once."""
  out = []
  for j in range(layer["w"].shape[1]):
    groups: dict[tuple[int, ...], jax.Array] = {}
    for i, f in enumerate(feats):
      term = f * layer["w"][i, j]
      groups[f.shape] = term if f.shape not in groups else groups[f.shape] + term
    dense = groups.pop(shape, jnp.zeros(shape, jnp.float32)) + layer["b"][j]
    # The barrier makes XLA compute the small row/column sums once; fused into the per-parameter loop they were
    # recomputed (rsqrts included) for every entry, which made the step ~5x slower.
    out.append(sum(jax.lax.optimization_barrier(list(groups.values())), dense))
  return out


@register("architecture", "lstm_hyper")
def lstm_hyper(*, preset: str = "small", lstm_hidden: int | None = None, num_weight_sets: int | None = None,
               mlp_hidden: int = 4, mlp_layers: int = 2, momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999),
               rms_decay: float = 0.999, factored_decays: tuple[float, ...] = (0.9, 0.99, 0.999),
               initial_step: float = 1e-2, magnitude_scale: float = 0.1, bank_init_scale: float = 0.1,
               output_init_scale: float = 1e-3) -> LearnedOptimizer:
  """VeLO: a per-tensor LSTM with global context mixes a bank of per-parameter MLPs and scales each tensor's step.

  Args:
    preset: ``"small"`` (LSTM 32, bank of 8) or ``"velo"`` (LSTM 512, bank of 256).
    lstm_hidden: LSTM width (and of the input projection); ``None``: the preset's.
    num_weight_sets: bank size; ``None``: the preset's.
    mlp_hidden, mlp_layers: width and number of hidden layers of the per-parameter MLP (VeLO: 4 and 2).
    momentum_decays, rms_decay, factored_decays: decays of the momenta, second moment and Adafactor statistics.
    initial_step: the untrained relative step ``exp(log_step)`` (a meta-parameter).
    magnitude_scale: ``a`` in ``exp(a * m)``.
    bank_init_scale: scale of the random part of each weight set at initialisation.
    output_init_scale: scale of the random initial weights of the mixing and step heads.
  """
  preset = arguments.choice("architectures.lstm_hyper.preset", preset, tuple(PRESETS))
  lstm_hidden = arguments.optional_integer("architectures.lstm_hyper.lstm_hidden", lstm_hidden, minimum=1)
  num_weight_sets = arguments.optional_integer("architectures.lstm_hyper.num_weight_sets", num_weight_sets,
                                               minimum=1)
  lstm_hidden = PRESETS[preset]["lstm_hidden"] if lstm_hidden is None else lstm_hidden
  num_weight_sets = PRESETS[preset]["num_weight_sets"] if num_weight_sets is None else num_weight_sets
  # Two hidden units carry the identity pair of the initialisation.
  mlp_hidden = arguments.integer("architectures.lstm_hyper.mlp_hidden", mlp_hidden, minimum=2)
  mlp_layers = arguments.integer("architectures.lstm_hyper.mlp_layers", mlp_layers, minimum=1)
  decay = {"minimum": 0.0, "maximum": 1.0, "open_minimum": True}
  momentum_decays = arguments.reals("architectures.lstm_hyper.momentum_decays", momentum_decays, allow_empty=False,
                                    **decay)
  factored_decays = arguments.reals("architectures.lstm_hyper.factored_decays", factored_decays, allow_empty=False,
                                    **decay)
  rms_decay = arguments.real("architectures.lstm_hyper.rms_decay", rms_decay, **decay)
  for name, values in (("momentum_decays", momentum_decays), ("factored_decays", factored_decays),
                       ("rms_decay", (rms_decay,))):
    if any(v >= 1.0 for v in values):
      raise arguments.ArgumentError(f"architectures.lstm_hyper.{name}", f"must be < 1, got {values}.")
  initial_step = arguments.real("architectures.lstm_hyper.initial_step", initial_step, minimum=0.0,
                                open_minimum=True)
  magnitude_scale = arguments.real("architectures.lstm_hyper.magnitude_scale", magnitude_scale, minimum=0.0)
  bank_init_scale = arguments.real("architectures.lstm_hyper.bank_init_scale", bank_init_scale, minimum=0.0)
  output_init_scale = arguments.real("architectures.lstm_hyper.output_init_scale", output_init_scale, minimum=0.0)

  num_momenta, num_factored = len(momentum_decays), len(factored_decays)
  num_features = velo_features.num_parameter_features(num_momenta, num_factored)
  sizes = (num_features,) + (mlp_hidden,) * mlp_layers + (2,)
  num_inputs = num_lstm_inputs(num_momenta)
  direction_feature = velo_features.adam_feature_index(num_momenta)

  def init(key: PRNGKey) -> MetaParams:
    k_bank, k_in, k_ctx, k_lstm, k_mix, k_step = jax.random.split(key, 6)
    bank = jax.vmap(lambda k: _init_bank(k, sizes, direction_feature, bank_init_scale))(
        jax.random.split(k_bank, num_weight_sets))
    projection = lambda k: {"w": jax.random.normal(k, (num_inputs, lstm_hidden), jnp.float32) / jnp.sqrt(num_inputs),
                            "b": jnp.zeros((lstm_hidden,), jnp.float32)}
    head = lambda k, n: output_init_scale * jax.random.normal(k, (lstm_hidden, n), jnp.float32)
    return {"bank": bank, "input": projection(k_in), "context": projection(k_ctx),
            "lstm": layers.init_lstm(k_lstm, lstm_hidden, lstm_hidden),
            "mix": {"w": head(k_mix, num_weight_sets),
                    "b": jnp.full((num_weight_sets,), 1.0 / num_weight_sets, jnp.float32)},
            "step": {"w": head(k_step, 1)[:, 0], "b": jnp.ones([], jnp.float32)},
            "log_step": jnp.asarray(jnp.log(initial_step), jnp.float32)}

  def optimizer(theta: MetaParams, *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs:
    loss_decays = velo_features.loss_decays(num_steps)

    def init_state(params: Params) -> LSTMHyperState:
      zeros = lambda shape_of: jax.tree.map(lambda p: jnp.zeros(shape_of(p), jnp.float32), params)
      rows = zeros(lambda p: (num_factored,) + features.factored_shapes(p.shape)[0])
      cols = zeros(lambda p: (num_factored,) + features.factored_shapes(p.shape)[1])
      return LSTMHyperState(
          count=jnp.zeros([], jnp.int32), momenta=tuple(zeros(lambda p: p.shape) for _ in momentum_decays),
          rms=zeros(lambda p: p.shape), rows=rows, cols=cols, lstm_h=zeros(lambda p: (lstm_hidden,)),
          lstm_c=zeros(lambda p: (lstm_hidden,)), loss=velo_features.init_loss_buffer())

    def update(grads, state: LSTMHyperState, params=None, *, loss=None, mask=None, **extra):
      del extra
      if params is None:
        raise ValueError("The lstm_hyper learned optimizer needs `params` in update(grads, state, params).")
      loss_buffer = velo_features.update_loss_buffer(state.loss, loss, loss_decays)
      fraction = state.count.astype(jnp.float32) / jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
      shared = jnp.concatenate([velo_features.fractional_tanh_embed(fraction),
                                velo_features.loss_features(loss_buffer, loss_decays)])

      treedef = jax.tree.structure(grads)
      # Momenta as one list per tensor (separate arrays: slicing a stacked array made XLA write each slice out).
      per_tensor_momenta = list(zip(*(treedef.flatten_up_to(m) for m in state.momenta)))
      flat = [treedef.flatten_up_to(x) for x in (grads, params)] + [per_tensor_momenta] + [
          treedef.flatten_up_to(x) for x in (state.rms, state.rows, state.cols, state.lstm_h, state.lstm_c)]
      masks = masked_stats.leaves(mask, treedef)
      moments, lstm_inputs = [], []
      for g, p, m, v, rows, cols, active in zip(*flat[:6], masks):
        g = jnp.clip(g.astype(jnp.float32), -velo_features.GRAD_CLIP, velo_features.GRAD_CLIP)
        m = [d * m_ + (1.0 - d) * g for d, m_ in zip(momentum_decays, m)]
        g_sq = jnp.square(g)
        v = rms_decay * v + (1.0 - rms_decay) * g_sq
        fac = [features.update_factored(rows[j], cols[j], g_sq, d, mask=active) for j, d in enumerate(factored_decays)]
        rows, cols = jnp.stack([r for r, _ in fac]), jnp.stack([c for _, c in fac])
        moments.append((g, m, v, rows, cols))
        lstm_inputs.append(jnp.concatenate([shared, velo_features.tensor_inputs(p, m, v, mask=active)]))
      x = jnp.stack(lstm_inputs)  # (num_tensors, num_inputs)
      # VeLO's global context: a max over all tensors of a ReLU projection, added to every tensor's input. A tensor
      # with no active entry (a padded-away layer) takes no part: 0 is neutral for a max of ReLUs.
      projected = jax.nn.relu(x @ theta["context"]["w"] + theta["context"]["b"])
      if mask is not None:
        projected = projected * jnp.stack([masked_stats.any_active(a) for a in masks])[:, None]
      context = jnp.max(projected, axis=0)
      x = x @ theta["input"]["w"] + theta["input"]["b"] + context
      h, c = layers.lstm_step(theta["lstm"], x, jnp.stack(flat[6]), jnp.stack(flat[7]))
      mix = h @ theta["mix"]["w"] + theta["mix"]["b"]  # (num_tensors, num_weight_sets), unconstrained
      step_mult = h @ theta["step"]["w"] + theta["step"]["b"]
      # The hypernetwork: each tensor's MLP is a linear combination of the bank's weight sets.
      mixed = jax.tree.map(lambda w: jnp.tensordot(mix, w, axes=1), theta["bank"])
      base_step = jnp.exp(theta["log_step"])

      updates = []
      for i, (p, (g, m, v, rows, cols)) in enumerate(zip(flat[1], moments)):
        active = masks[i]
        feats, normalisers = velo_features.parameter_features(p, g, m, v, rows, cols, mask=active)
        tensor_mlp = jax.tree.map(lambda w: w[i], mixed)
        # Normalising each feature to RMS 1 over the tensor is a per-tensor scaling of the first layer's rows.
        first = {"w": tensor_mlp[0]["w"] * normalisers[:, None], "b": tensor_mlp[0]["b"]}
        hidden = [jax.nn.relu(x) for x in _first_layer(first, feats, g.shape)]
        if len(tensor_mlp) > 2:
          # Written out once: left fused, XLA duplicated the first layer into every unit of the second.
          hidden = jax.lax.optimization_barrier(hidden)
        d, mag = apply_small_mlp(tensor_mlp[1:], hidden)
        p32 = p.astype(jnp.float32)
        scale = base_step * step_mult[i] * jnp.sqrt(masked_stats.mean(jnp.square(p32), active) + 1e-9)
        step = -scale * d * features.bounded_exp(magnitude_scale * mag)
        updates.append(masked_stats.zero_inactive(step, active).astype(p.dtype))
      unflat = treedef.unflatten
      new_state = LSTMHyperState(
          count=state.count + 1, momenta=tuple(unflat([x[1][k] for x in moments]) for k in range(num_momenta)),
          rms=unflat([x[2] for x in moments]),
          rows=unflat([x[3] for x in moments]), cols=unflat([x[4] for x in moments]), lstm_h=unflat(list(h)),
          lstm_c=unflat(list(c)), loss=loss_buffer)
      return unflat(updates), new_state

    return optax.GradientTransformationExtraArgs(init_state, update)

  return LearnedOptimizer(name="lstm_hyper", init=init, optimizer=optimizer)
