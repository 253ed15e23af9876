"""Named evaluation suites: fixed lists of task families a learned optimizer is scored on (registry kind
``eval_suite``).

A suite is a registered factory with no arguments returning ``{display name: TaskFamily}``. The families are built
by calling the task plugins directly with explicit arguments, so gin bindings of a meta-training config never change
what a suite contains. Add a suite with ``@register("eval_suite", name)``; ``scoring.evaluate_suite`` also takes any
such mapping.
"""

from __future__ import annotations

from lopt import registry
from lopt.registry import register
from lopt.tasks import autoencoder, char_rnn, classic_2d, image_conv, image_mlp, quadratic, transformer_lm
from lopt.tasks.base import TaskFamily

Suite = dict[str, TaskFamily]


@register("eval_suite", "default")
def default_suite() -> Suite:
  """Six small tasks across six families, sized so a full evaluation takes a few minutes on 2 CPU cores."""
  return {
      "quadratic": quadratic(16, min_scale=0.01, max_scale=100.0, noise_std=0.1),
      "rosenbrock": classic_2d("rosenbrock"),
      "image_mlp": image_mlp(hidden_sizes=(32,), batch_size=128),
      "image_conv": image_conv(channels=(4, 8), batch_size=16),
      "autoencoder": autoencoder(hidden_sizes=(32, 8), batch_size=32),
      "transformer_lm": transformer_lm(width=16, depth=1, num_heads=2, seq_len=8, batch_size=8),
  }


@register("eval_suite", "full")
def full_suite() -> Suite:
  """The default suite plus larger and more varied tasks (a recurrent LM, a deeper MLP, Beale, a wider conv net)."""
  return {
      **default_suite(),
      "beale": classic_2d("beale"),
      "image_mlp_deep_tanh": image_mlp(hidden_sizes=(64, 32), batch_size=64, activation="tanh"),
      "image_conv_wide": image_conv(channels=(8, 16), batch_size=32),
      "char_rnn": char_rnn(cell="gru", hidden_size=32, seq_len=16, batch_size=8),
      "transformer_lm_2x32": transformer_lm(width=32, depth=2, num_heads=2, seq_len=16, batch_size=8),
  }


@register("eval_suite", "tiny")
def tiny_suite() -> Suite:
  """Two cheap tasks for tests and smoke runs."""
  return {"quadratic": quadratic(4), "rosenbrock": classic_2d("rosenbrock")}


@register("eval_suite", "heldout")
def heldout_suite() -> Suite:
  """Eleven tasks outside the ``gin_configs/pretrained`` recipes' training distribution (docs/pretrained.md).

  Those recipes train on the parametric sampler's quadratic, image_mlp and autoencoder kinds (widths 8-64, depth
  1-2, quadratic dimension 4-32, batch sizes 8-64). Here: families they never see (classic 2-D functions, conv nets,
  recurrent and transformer LMs) and structures outside those ranges (a 64-D quadratic with a 1e6 condition
  number, a 256-wide MLP (4x the widest), a 3-layer MLP, batch size 128). Scored at 1,000 steps on 3 seeds
  (``SUITE_SETTINGS``).
  """
  return {
      "quadratic_64d": quadratic(64, min_scale=1e-3, max_scale=1e3, noise_std=0.1),
      "beale": classic_2d("beale"),
      "himmelblau": classic_2d("himmelblau"),
      "rosenbrock": classic_2d("rosenbrock"),
      "image_mlp_256": image_mlp(hidden_sizes=(256,), batch_size=128),
      "image_mlp_3x64": image_mlp(hidden_sizes=(64, 64, 64), batch_size=128),
      "image_conv_4x8": image_conv(channels=(4, 8), batch_size=16),
      "image_conv_8x16_tanh": image_conv(channels=(8, 16), batch_size=32, activation="tanh"),
      "char_rnn_gru": char_rnn(cell="gru", hidden_size=32, seq_len=16, batch_size=8),
      "char_rnn_lstm": char_rnn(cell="lstm", hidden_size=16, seq_len=8, batch_size=8),
      "transformer_lm": transformer_lm(width=16, depth=1, num_heads=2, seq_len=8, batch_size=8),
  }


@register("eval_suite", "validation")
def validation_suite() -> Suite:
  """Nine tasks for choosing among candidate recipes, so that ``heldout`` is scored once per shipped candidate.

  Disjoint from ``heldout`` (no task structure in common) and, like it, outside the ``gin_configs/pretrained``
  recipes' training distribution: the 2-D function heldout does not use (Booth), a 48-D quadratic (condition
  number 1e4), MLPs wider (128) or deeper (4 layers) than the sampler's, a tanh MLP, a wide autoencoder, a conv net
  with 6-12 channels, a GRU and a transformer LM of other sizes. Scored at 500 steps on 2 seeds
  (``SUITE_SETTINGS``), so a candidate's evaluation takes minutes once the baseline cache is warm.
  """
  return {
      "quadratic_48d": quadratic(48, min_scale=1e-2, max_scale=1e2, noise_std=0.05),
      "booth": classic_2d("booth"),
      "image_mlp_128x32_tanh": image_mlp(hidden_sizes=(128, 32), batch_size=96, activation="tanh"),
      "image_mlp_4x32": image_mlp(hidden_sizes=(32, 32, 32, 32), batch_size=64),
      "autoencoder_128x16": autoencoder(hidden_sizes=(128, 16), batch_size=96),
      "image_conv_6x12": image_conv(channels=(6, 12), batch_size=24),
      "char_rnn_gru24": char_rnn(cell="gru", hidden_size=24, seq_len=12, batch_size=16),
      "transformer_lm_w24": transformer_lm(width=24, depth=1, num_heads=3, seq_len=12, batch_size=8),
      "transformer_lm_2x16": transformer_lm(width=16, depth=2, num_heads=2, seq_len=8, batch_size=16),
  }


# Evaluation settings a suite is meant to be scored at (``experiments/evaluate.py`` uses them unless flags say
# otherwise); suites not listed use the evaluator's defaults.
SUITE_SETTINGS: dict[str, dict[str, int]] = {"heldout": {"num_steps": 1000, "num_seeds": 3},
                                             "validation": {"num_steps": 500, "num_seeds": 2}}


def get_suite(name: str) -> Suite:
  """The suite registered as ``name``; an unknown name lists the registered ones and the closest match."""
  return registry.lookup("eval_suite", name)()
