"""MLP autoencoders reconstructing the inputs of an in-memory data set."""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lopt import arguments
from lopt.registry import register
from lopt.tasks import data
from lopt.tasks.base import TaskFamily
from lopt.tasks.model_family import ACTIVATIONS, check_activation, model_family


class Autoencoder(nn.Module):
  """Dense encoder through ``hidden_sizes`` (the last is the code), mirrored decoder, sigmoid output in [0, 1]."""

  hidden_sizes: Sequence[int]
  num_features: int
  activation: Callable[[jax.Array], jax.Array]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    sizes = tuple(self.hidden_sizes)
    for size in sizes + sizes[-2::-1]:
      x = self.activation(nn.Dense(size)(x))
    return jax.nn.sigmoid(nn.Dense(self.num_features)(x))


@register("task_family", "autoencoder")
def autoencoder(*, hidden_sizes: Sequence[int] = (32, 8), dataset: str = "digits", batch_size: int = 32,
                activation: str = "relu", data_dir: str | None = None) -> TaskFamily:
  """MLP autoencoder with mean squared reconstruction error on a data set with features in [0, 1].

  Args:
    hidden_sizes: encoder widths; the last is the bottleneck, and the decoder mirrors the encoder.
    dataset: a data set known to ``lopt.tasks.data.load`` whose features lie in [0, 1] (digits or image files).
    batch_size: examples per batch.
    activation: one of ``lopt.tasks.model_family.ACTIVATIONS``.
    data_dir: directory of the standard files for file data sets.

  Returns:
    A family whose ``cfg`` is ``{"init_scale": scalar}``. The normaliser is the error of predicting 0.5 for every
    feature (where a fresh sigmoid output sits), computed once on the training split.
  """
  owner = "task_families.autoencoder"
  hidden_sizes = arguments.integers(f"{owner}.hidden_sizes", hidden_sizes, minimum=1, allow_empty=False)
  batch_size = arguments.integer(f"{owner}.batch_size", batch_size, minimum=1)
  act = check_activation(arguments.choice(f"{owner}.activation", activation, sorted(ACTIVATIONS)))
  splits = data.load(dataset, data_dir)
  num_features = splits.train.x.shape[1]
  model = Autoencoder(hidden_sizes=hidden_sizes, num_features=num_features, activation=act)
  normalizer = float(np.mean((np.asarray(splits.train.x) - 0.5)**2))

  def batch(key, split):
    return data.sample_batch(getattr(splits, split), key, batch_size)[0]

  def loss(apply, params, key, x):
    del key  # Deterministic model.
    return jnp.mean((apply(params, x) - x)**2)

  name = f"autoencoder_{dataset}_h{'x'.join(map(str, hidden_sizes))}_b{batch_size}_{activation}"
  return model_family(name=name, model=model, example_input=splits.train.x[:1], batch=batch, loss=loss,
                      normalizer=normalizer)
