"""Diagonal quadratic bowls with log-uniform curvatures: the cheapest task family, for tests and sanity checks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from lopt import arguments
from lopt.registry import register
from lopt.tasks.base import SPLITS, Task, TaskFamily
from lopt.types import PRNGKey, PyTree


def _log_uniform(key: PRNGKey, shape: tuple[int, ...], low: float, high: float) -> jax.Array:
  """Samples in ``[low, high]`` with a uniform logarithm, so every order of magnitude is equally likely."""
  return jnp.exp(jax.random.uniform(key, shape, minval=math.log(low), maxval=math.log(high)))


def _family_name(dim: int, min_scale: float, max_scale: float, noise_std: float) -> str:
  """Encodes every argument, since they all change the compiled sampling or loss code."""
  noise = f"_noise{noise_std:g}" if noise_std else ""
  return f"quadratic_d{dim}_s{min_scale:g}-{max_scale:g}{noise}"


@register("task_family", "quadratic")
def quadratic(dim: int = 10, *, min_scale: float = 0.1, max_scale: float = 10.0,
              noise_std: float = 0.0) -> TaskFamily:
  """Diagonal quadratic 0.5 * mean(scales * (x - center - noise)**2) with log-uniform scales.

  Args:
    dim: number of parameters.
    min_scale: smallest curvature.
    max_scale: largest curvature; ``max_scale / min_scale`` is the worst condition number of a sampled task.
    noise_std: standard deviation of the Gaussian noise added to the target at every batch; 0 makes the task
      deterministic.

  Returns:
    A family whose ``cfg`` is ``{"scales": [dim], "center": [dim]}`` and whose params are ``{"x": [dim]}``.
  """
  owner = "task_families.quadratic"
  dim = arguments.integer(f"{owner}.dim", dim, minimum=1)
  min_scale = arguments.real(f"{owner}.min_scale", min_scale, minimum=0.0, open_minimum=True)
  max_scale = arguments.real(f"{owner}.max_scale", max_scale, minimum=min_scale)
  noise_std = arguments.real(f"{owner}.noise_std", noise_std, minimum=0.0)

  def sample(key: PRNGKey) -> PyTree:
    scale_key, center_key = jax.random.split(key)
    return {
        "scales": _log_uniform(scale_key, (dim,), min_scale, max_scale),
        "center": jax.random.normal(center_key, (dim,)),
    }

  def task(cfg: PyTree) -> Task:
    scales, center = cfg["scales"], cfg["center"]

    def init(key: PRNGKey) -> PyTree:
      return {"x": jax.random.normal(key, (dim,))}

    def batch(key: PRNGKey, split: str) -> jax.Array:
      if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}'. Splits: {', '.join(SPLITS)}.")
      if noise_std == 0:
        return jnp.zeros((dim,))
      return noise_std * jax.random.normal(key, (dim,))

    def loss(params: PyTree, key: PRNGKey, noise: jax.Array) -> jax.Array:
      del key  # The noise comes with the batch.
      return 0.5 * jnp.mean(scales * (params["x"] - center - noise)**2)

    def normalize(value: jax.Array) -> jax.Array:
      # x and center are independent standard normals, so E[(x - center)**2] = 2 and the expected initial loss
      # is mean(scales).
      return value / jnp.mean(scales)

    return Task(init=init, loss=loss, batch=batch, normalize=normalize)

  return TaskFamily(name=_family_name(dim, min_scale, max_scale, noise_std), sample=sample, task=task)
