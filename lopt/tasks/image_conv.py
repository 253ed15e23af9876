"""Small convolutional classifiers on in-memory image data sets."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lopt import arguments
from lopt.registry import register
from lopt.tasks import data
from lopt.tasks.base import TaskFamily
from lopt.tasks.model_family import (ACTIVATIONS, check_activation, classification_accuracy, classification_loss,
                                      model_family)


class ConvNet(nn.Module):
  """3x3 convolutions (stride 2 after the first), flattened into a dense layer to the logits."""

  channels: Sequence[int]
  num_classes: int
  activation: Callable[[jax.Array], jax.Array]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.channels):
      x = self.activation(nn.Conv(width, (3, 3), strides=1 if i == 0 else 2)(x))
    # Flattening (not global pooling) keeps position information, which small images need to train quickly.
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


@register("task_family", "image_conv")
def image_conv(*, channels: Sequence[int] = (8, 16), dataset: str = "digits", batch_size: int = 32,
               activation: str = "relu", data_dir: str | None = None) -> TaskFamily:
  """Conv net classifier (softmax cross-entropy) on an image data set (digits, or MNIST/CIFAR-10 files).

  Args:
    channels: output channels of each convolution; at least one.
    dataset: an image data set known to ``lopt.tasks.data.load``.
    batch_size: examples per batch.
    activation: one of ``lopt.tasks.model_family.ACTIVATIONS``.
    data_dir: directory of the standard files for file data sets (``mnist``, ``fashion_mnist``, ``cifar10``).

  Returns:
    A family whose ``cfg`` is ``{"init_scale": scalar}``; the normaliser is ``log(num_classes)``.
  """
  owner = "task_families.image_conv"
  channels = arguments.integers(f"{owner}.channels", channels, minimum=1, allow_empty=False)
  batch_size = arguments.integer(f"{owner}.batch_size", batch_size, minimum=1)
  act = check_activation(arguments.choice(f"{owner}.activation", activation, sorted(ACTIVATIONS)))
  shape = data.image_shape(dataset)
  splits = data.load(dataset, data_dir)
  classes = data.num_classes(splits)
  model = ConvNet(channels=channels, num_classes=classes, activation=act)

  def batch(key, split):
    x, y = data.sample_batch(getattr(splits, split), key, batch_size)
    return x.reshape((batch_size, *shape)), y

  name = f"image_conv_{dataset}_c{'x'.join(map(str, channels))}_b{batch_size}_{activation}"
  return model_family(name=name, model=model, example_input=jnp.zeros((1, *shape)), batch=batch,
                      loss=classification_loss, normalizer=math.log(classes),
                      accuracy=classification_accuracy)
