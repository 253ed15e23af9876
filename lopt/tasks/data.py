"""In-memory data sets with ``train`` / ``outer_valid`` / ``test`` splits.

A data set is small enough to live on the device as a few arrays; batches are gathered from them inside ``jit`` by
``sample_batch``, so a batch is a pure function of its key. ``outer_valid`` is held out from inner training and
serves the meta-objective; ``test`` is kept for final evaluation only.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt.registry import closest
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


DIGITS_SIZES: tuple[int, int, int] = (1197, 300, 300)  # train, outer_valid, test; sums to the 1797 images.


@functools.lru_cache(maxsize=None)
def digits(seed: int = 0) -> Splits:
  """scikit-learn's bundled 8x8 handwritten digits (10 classes, 64 features in [0, 1]); no network needed.

  Args:
    seed: seeds the fixed permutation that assigns images to splits.

  Returns:
    1197 train, 300 outer_valid and 300 test examples. Cached per seed, so building a family twice does not
    reload or re-upload the data.
  """
  # Imported here so that scikit-learn is only needed (and its import time only paid) by users of this data set.
  from sklearn import datasets  # pylint: disable=import-outside-toplevel

  bunch = datasets.load_digits()
  x = (bunch.data / 16.0).astype(np.float32)  # Pixel intensities are integers in [0, 16].
  y = bunch.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(y))
  bounds = np.cumsum(DIGITS_SIZES)[:-1]
  parts = np.split(order, bounds)
  return Splits(*(Split(jnp.asarray(x[idx]), jnp.asarray(y[idx])) for idx in parts))


# Data set name -> loader; every loader takes no required arguments and returns ``Splits``.
LOADERS: dict[str, Callable[[], Splits]] = {
    "digits": digits,
}


def load(name: str) -> Splits:
  """Returns the splits of the data set called ``name``.

  Raises:
    ValueError: for an unknown name, listing the supported names and the closest match.
  """
  if name not in LOADERS:
    hint = closest(name, list(LOADERS))
    suffix = f" Did you mean '{hint}'?" if hint else ""
    raise ValueError(f"Unknown data set '{name}'. Supported: {', '.join(sorted(LOADERS))}.{suffix}")
  return LOADERS[name]()


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
