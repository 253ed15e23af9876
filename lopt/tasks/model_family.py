"""Builds a ``TaskFamily`` from a flax model, a batch function and a loss: the part every neural family shares.

Each sampled configuration is ``{"init_scale": scalar}``, log-uniform in ``INIT_SCALE_RANGE``; it multiplies the
initial parameters so that tasks of one family start from differently scaled networks (VeLO-style variety that
keeps parameter shapes fixed, hence ``vmap``-able).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lopt.tasks.base import SPLITS, Task, TaskFamily
from lopt.types import Batch, Params, PRNGKey, PyTree

INIT_SCALE_RANGE: tuple[float, float] = (0.5, 2.0)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
}


def check_activation(activation: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the activation called ``activation``; raises ValueError listing the options otherwise."""
  if activation not in ACTIVATIONS:
    raise ValueError(f"Unknown activation '{activation}'. Options: {', '.join(sorted(ACTIVATIONS))}.")
  return ACTIVATIONS[activation]


def sample_init_scale(key: PRNGKey) -> PyTree:
  low, high = INIT_SCALE_RANGE
  return {"init_scale": jnp.exp(jax.random.uniform(key, (), minval=math.log(low), maxval=math.log(high)))}


def classification_loss(apply: Callable[..., Any], params: Params, key: PRNGKey,
                        examples: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Mean softmax cross-entropy of a deterministic classifier (``key`` unused: no dropout)."""
  del key
  x, y = examples
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y))


def classification_accuracy(apply: Callable[..., Any], params: Params,
                            examples: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Fraction of examples whose highest logit is the label."""
  x, y = examples
  return jnp.mean(jnp.argmax(apply(params, x), axis=-1) == y)


def model_family(*, name: str, model: nn.Module, example_input: Any,
                 batch: Callable[[PRNGKey, str], Batch],
                 loss: Callable[[Callable[..., Any], Params, PRNGKey, Batch], jax.Array],
                 normalizer: float,
                 accuracy: Callable[[Callable[..., Any], Params, Batch], jax.Array] | None = None) -> TaskFamily:
  """A family of tasks training ``model``.

  Args:
    name: identifies the compiled structure (every argument that changes shapes or code must appear in it).
    model: the flax module; ``model.init(key, example_input)`` builds its parameters.
    example_input: an input batch used only for shape inference at ``init``.
    batch: ``batch(key, split) -> batch`` for a valid split.
    loss: ``loss(apply, params, key, batch) -> scalar`` where ``apply(params, x)`` runs the model.
    normalizer: the loss of a typical fresh network (e.g. ``log(num_classes)``); losses are divided by it.
    accuracy: optional ``accuracy(apply, params, batch) -> scalar``.

  Returns:
    The family.
  """

  def apply(params: Params, x: Any) -> Any:
    return model.apply({"params": params}, x)

  def task(cfg: PyTree) -> Task:
    init_scale = cfg["init_scale"]

    def init(key: PRNGKey) -> Params:
      params = model.init(key, example_input)["params"]
      return jax.tree.map(lambda p: p * init_scale, params)

    def checked_batch(key: PRNGKey, split: str) -> Batch:
      if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}'. Splits: {', '.join(SPLITS)}.")
      return batch(key, split)

    task_accuracy = None if accuracy is None else (lambda params, examples: accuracy(apply, params, examples))
    return Task(init=init, loss=lambda params, key, examples: loss(apply, params, key, examples),
                batch=checked_batch, normalize=lambda value: value / normalizer, accuracy=task_accuracy)

  return TaskFamily(name=name, sample=sample_init_scale, task=task)
