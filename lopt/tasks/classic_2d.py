"""Classic 2-D optimisation test functions (Rosenbrock, Beale, Booth, Himmelblau) from random starting points."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from lopt import arguments
from lopt.registry import register
from lopt.tasks.base import SPLITS, Task, TaskFamily
from lopt.types import PRNGKey, PyTree


def rosenbrock(p: jax.Array) -> jax.Array:
  """Minimum 0 at (1, 1) at the end of a long curved valley."""
  x, y = p[0], p[1]
  return (1 - x)**2 + 100 * (y - x**2)**2


def beale(p: jax.Array) -> jax.Array:
  """Minimum 0 at (3, 0.5); flat plateaus and steep walls."""
  x, y = p[0], p[1]
  return (1.5 - x + x * y)**2 + (2.25 - x + x * y**2)**2 + (2.625 - x + x * y**3)**2


def booth(p: jax.Array) -> jax.Array:
  """Minimum 0 at (1, 3); a simple, moderately conditioned quadratic."""
  x, y = p[0], p[1]
  return (x + 2 * y - 7)**2 + (2 * x + y - 5)**2


def himmelblau(p: jax.Array) -> jax.Array:
  """Four minima of value 0, e.g. at (3, 2); non-convex."""
  x, y = p[0], p[1]
  return (x**2 + y - 11)**2 + (x + y**2 - 7)**2


# name -> (function, (low, high) corners of the box that starting points are drawn from).
FUNCTIONS: dict[str, tuple[Callable[[jax.Array], jax.Array], tuple[tuple[float, float], tuple[float, float]]]] = {
    "rosenbrock": (rosenbrock, ((-2.0, -1.0), (2.0, 3.0))),
    "beale": (beale, ((-2.0, -2.0), (2.0, 2.0))),
    "booth": (booth, ((-6.0, -4.0), (6.0, 8.0))),
    "himmelblau": (himmelblau, ((-5.0, -5.0), (5.0, 5.0))),
}

START_JITTER = 0.01  # ``init(key)`` perturbs the sampled start so that different keys give different params.
MIN_NORMALIZER = 1e-2  # A start that happens to lie near a minimum must not blow the normalised loss up.


@register("task_family", "classic_2d")
def classic_2d(function: str = "rosenbrock", *, noise_std: float = 0.0) -> TaskFamily:
  """A classic 2-D test function minimised from a random start (optionally with noisy gradients).

  Args:
    function: one of ``FUNCTIONS``.
    noise_std: standard deviation of a Gaussian shift of the evaluation point drawn per batch; 0 is
      deterministic.

  Returns:
    A family whose ``cfg`` is ``{"start": [2]}`` (uniform in the function's box) and whose params are
    ``{"xy": [2]}``. Losses are divided by the function's value at the start, so every task starts near 1.
  """
  function = arguments.choice("task_families.classic_2d.function", function, sorted(FUNCTIONS))
  noise_std = arguments.real("task_families.classic_2d.noise_std", noise_std, minimum=0.0)
  fn, (low, high) = FUNCTIONS[function]

  def sample(key: PRNGKey) -> PyTree:
    return {"start": jax.random.uniform(key, (2,), minval=jnp.array(low), maxval=jnp.array(high))}

  def task(cfg: PyTree) -> Task:
    start = cfg["start"]

    def init(key: PRNGKey) -> PyTree:
      return {"xy": start + START_JITTER * jax.random.normal(key, (2,))}

    def batch(key: PRNGKey, split: str) -> jax.Array:
      if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}'. Splits: {', '.join(SPLITS)}.")
      return noise_std * jax.random.normal(key, (2,)) if noise_std else jnp.zeros((2,))

    def loss(params: PyTree, key: PRNGKey, shift: jax.Array) -> jax.Array:
      del key  # The noise comes with the batch.
      return fn(params["xy"] + shift)

    def normalize(value: jax.Array) -> jax.Array:
      return value / jnp.maximum(fn(start), MIN_NORMALIZER)

    return Task(init=init, loss=loss, batch=batch, normalize=normalize)

  noise = f"_noise{noise_std:g}" if noise_std else ""
  return TaskFamily(name=f"classic_2d_{function}{noise}", sample=sample, task=task)
