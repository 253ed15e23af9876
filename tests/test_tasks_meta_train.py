"""A quickstart-sized meta-training run over a mixture of five task families (slow: run with ``-m slow``)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lopt import tasks, writers
from lopt.architectures import ff
from lopt.meta_trainers import outer_loop
from lopt.meta_trainers import pes as pes_lib


@pytest.mark.slow
def test_meta_training_on_a_five_family_mixture_lowers_meta_loss(tmp_path):
  sampler = tasks.mixture([
      tasks.quadratic(8, min_scale=0.01, max_scale=100.0, noise_std=0.1),
      tasks.classic_2d("rosenbrock"),
      tasks.image_mlp(hidden_sizes=(16,), batch_size=32),
      tasks.autoencoder(hidden_sizes=(16, 4), batch_size=32),
      tasks.char_rnn(hidden_size=16, embed_size=8, seq_len=8, batch_size=8),
  ])
  result = outer_loop.meta_train(
      task_sampler=sampler, architecture=ff.ff(hidden_sizes=(16,)),
      estimator=pes_lib.pes(num_tasks=4, truncation_length=10, horizon=100, std=0.01), num_outer_steps=200,
      workdir=str(tmp_path), wandb_mode="disabled", log_every=20, checkpoint_every=1000,
      meta_optimizer=outer_loop.default_meta_optimizer(learning_rate=3e-3))
  assert result.step == 200
  losses = [line["meta_loss"] for line in writers.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))]
  assert len(losses) == 10 and all(np.isfinite(losses))
  # Each window averages 20 steps over randomly drawn families; compare the first and last 40 steps.
  assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
