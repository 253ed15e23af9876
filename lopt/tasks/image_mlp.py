"""Multi-layer perceptron classifiers on small in-memory image data sets."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lopt.registry import register
from lopt.tasks import data
from lopt.tasks.base import SPLITS, Task, TaskFamily
from lopt.types import PRNGKey, PyTree

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
}

INIT_SCALE_RANGE: tuple[float, float] = (0.5, 2.0)


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
    activation: one of ``ACTIVATIONS``.
    data_dir: directory of the standard files for file data sets (``mnist``, ``fashion_mnist``, ``cifar10``).

  Returns:
    A family whose ``cfg`` is ``{"init_scale": scalar}`` (log-uniform in ``INIT_SCALE_RANGE``; it multiplies the
    initial weights so that sampled tasks start from differently scaled networks) and whose params are flax
    parameters.

  Raises:
    ValueError: for an unknown data set or activation.
  """
  if activation not in ACTIVATIONS:
    raise ValueError(f"Unknown activation '{activation}'. Options: {', '.join(sorted(ACTIVATIONS))}.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  hidden_sizes = tuple(int(size) for size in hidden_sizes)
  splits = data.load(dataset, data_dir)
  classes = data.num_classes(splits)
  model = MLP(hidden_sizes=hidden_sizes, num_classes=classes, activation=ACTIVATIONS[activation])
  example_x = splits.train.x[:1]

  def sample(key: PRNGKey) -> PyTree:
    low, high = INIT_SCALE_RANGE
    return {"init_scale": jnp.exp(jax.random.uniform(key, (), minval=math.log(low), maxval=math.log(high)))}

  def task(cfg: PyTree) -> Task:
    init_scale = cfg["init_scale"]

    def init(key: PRNGKey) -> PyTree:
      params = model.init(key, example_x)["params"]
      # Biases start at zero, so scaling every leaf only rescales the weights.
      return jax.tree.map(lambda p: p * init_scale, params)

    def batch(key: PRNGKey, split: str) -> tuple[jax.Array, jax.Array]:
      if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}'. Splits: {', '.join(SPLITS)}.")
      return data.sample_batch(getattr(splits, split), key, batch_size)

    def loss(params: PyTree, key: PRNGKey, examples: tuple[jax.Array, jax.Array]) -> jax.Array:
      del key  # Deterministic model (no dropout).
      x, y = examples
      logits = model.apply({"params": params}, x)
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    def normalize(value: jax.Array) -> jax.Array:
      # A uniform prediction scores log(num_classes), so a fresh network sits near 1.
      return value / math.log(classes)

    def accuracy(params: PyTree, examples: tuple[jax.Array, jax.Array]) -> jax.Array:
      x, y = examples
      logits = model.apply({"params": params}, x)
      return jnp.mean(jnp.argmax(logits, axis=-1) == y)

    return Task(init=init, loss=loss, batch=batch, normalize=normalize, accuracy=accuracy)

  return TaskFamily(name=_family_name(dataset, hidden_sizes, batch_size, activation), sample=sample, task=task)
