"""The split types every data set shares, and drawing batches from them inside ``jit``.

A data set is small enough to live on the device as a few arrays; batches are gathered from them inside ``jit`` by
``sample_batch``, so a batch is a pure function of its key. ``outer_valid`` is held out from inner training and
serves the meta-objective; ``test`` is kept for final evaluation only.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lopt.types import PRNGKey


class Split(NamedTuple):
  """One split: inputs ``x`` (float32, ``[n, features]``) and integer labels ``y`` (int32, ``[n]``)."""

  x: jax.Array
  y: jax.Array


class Splits(NamedTuple):
  """The three splits of a data set; field names match ``lopt.tasks.base.SPLITS``."""

  train: Split
  outer_valid: Split
  test: Split


def num_classes(splits: Splits) -> int:
  """Number of classes, taken as one more than the largest label of any split (labels are ``0..k-1``)."""
  return int(max(int(jnp.max(split.y)) for split in splits)) + 1


def sample_batch(split: Split, key: PRNGKey, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Draws ``batch_size`` examples uniformly with replacement; traceable under ``jit`` and ``vmap``.

  Sampling with replacement keeps the batch a pure function of ``key`` with no epoch state to carry or resume.

  Args:
    split: the split to draw from.
    key: PRNG key; the same key gives the same batch.
    batch_size: number of examples (static).

  Returns:
    ``(x, y)`` of shapes ``[batch_size, features]`` and ``[batch_size]``.
  """
  idx = jax.random.randint(key, (batch_size,), 0, split.y.shape[0])
  return split.x[idx], split.y[idx]
