"""Multi-layer perceptron classifiers on small in-memory image data sets."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax

from lopt import arguments
from lopt.registry import register
from lopt.tasks import data
from lopt.tasks.base import TaskFamily
from lopt.tasks.model_family import (ACTIVATIONS, check_activation, classification_accuracy, classification_loss,
                                      model_family)


class MLP(nn.Module):
  """Dense layers with an activation between them, ending in ``num_classes`` logits."""

  hidden_sizes: Sequence[int]
  num_classes: int
  activation: Callable[[jax.Array], jax.Array]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for size in self.hidden_sizes:
      x = self.activation(nn.Dense(size)(x))
    return nn.Dense(self.num_classes)(x)


def _family_name(dataset: str, hidden_sizes: Sequence[int], batch_size: int, activation: str) -> str:
  """Encodes every argument, since they all change the compiled code."""
  return f"image_mlp_{dataset}_{'x'.join(map(str, hidden_sizes))}_b{batch_size}_{activation}"


@register("task_family", "image_mlp")
def image_mlp(*, hidden_sizes: Sequence[int] = (32,), dataset: str = "digits", batch_size: int = 128,
              activation: str = "relu", data_dir: str | None = None) -> TaskFamily:
  """MLP classifier (softmax cross-entropy) on a small in-memory image data set.

  Args:
    hidden_sizes: widths of the hidden layers; ``()`` gives a linear classifier.
    dataset: a name known to ``lopt.tasks.data.load``.
    batch_size: examples per batch.
    activation: one of ``lopt.tasks.model_family.ACTIVATIONS``.
    data_dir: directory of the standard files for file data sets (``mnist``, ``fashion_mnist``, ``cifar10``).

  Returns:
    A family whose ``cfg`` is ``{"init_scale": scalar}`` (see ``lopt.tasks.model_family``) and whose params are
    flax parameters; losses are normalised by log(num_classes), the loss of a uniform prediction.

  Raises:
    ValueError: for an unknown data set or activation.
  """
  owner = "task_families.image_mlp"
  hidden_sizes = arguments.integers(f"{owner}.hidden_sizes", hidden_sizes, minimum=1)
  batch_size = arguments.integer(f"{owner}.batch_size", batch_size, minimum=1)
  act = check_activation(arguments.choice(f"{owner}.activation", activation, sorted(ACTIVATIONS)))
  splits = data.load(dataset, data_dir)
  classes = data.num_classes(splits)

  def batch(key, split):
    return data.sample_batch(getattr(splits, split), key, batch_size)

  return model_family(name=_family_name(dataset, hidden_sizes, batch_size, activation),
                      model=MLP(hidden_sizes=hidden_sizes, num_classes=classes, activation=act),
                      example_input=splits.train.x[:1], batch=batch, loss=classification_loss,
                      normalizer=math.log(classes), accuracy=classification_accuracy)
