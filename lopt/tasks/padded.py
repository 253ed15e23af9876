"""Padded building blocks of structure-polymorphic families: a dense chain with masked units and skippable layers,
and a bank of data sets padded to common shapes.

A structure (widths, depth, input size, number of classes, batch size, activation, data set) is a pytree of int32
scalars drawn inside ``jit``; every structure of a family shares one set of padded parameter shapes, hence one
compiled program. What a structure does not use is masked: a unit's weights are multiplied by the mask in the
forward pass (so inactive entries get exactly zero gradient and whatever they hold changes nothing), an inactive
layer passes its input through unchanged, and inactive examples and classes are left out of the loss.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lopt.tasks import data
from lopt.tasks.model_family import ACTIVATIONS
from lopt.types import Params, PRNGKey, PyTree


def active(n: jax.Array, size: int) -> jax.Array:
  """0/1 float vector of length ``size``: the first ``n`` entries active."""
  return (jnp.arange(size) < n).astype(jnp.float32)


def dense_mask(n_in: jax.Array, n_out: jax.Array, shape: tuple[int, int], on: jax.Array | bool = True
               ) -> dict[str, jax.Array]:
  """Mask of a dense layer ``{"w": (in, out), "b": (out,)}`` using its first ``n_in`` inputs and ``n_out`` units."""
  on = jnp.asarray(on, jnp.float32)
  rows, cols = active(n_in, shape[0]), active(n_out, shape[1])
  return {"w": rows[:, None] * cols[None, :] * on, "b": cols * on}


def init_dense(key: PRNGKey, mask: dict[str, jax.Array], scale: jax.Array) -> dict[str, jax.Array]:
  """LeCun-normal weights over the active fan-in (as the unpadded layer would draw), zero bias, 0 where inactive."""
  fan_in = jnp.maximum(jnp.sum(jnp.max(mask["w"], axis=1)), 1.0)
  w = jax.random.normal(key, mask["w"].shape) * jax.lax.rsqrt(fan_in) * scale
  return {"w": w * mask["w"], "b": jnp.zeros_like(mask["b"])}


def activation(index: jax.Array, x: jax.Array, names: Sequence[str]) -> jax.Array:
  """The activation ``names[index]`` applied to ``x`` (one branch per name; a select under ``vmap``)."""
  return jax.lax.switch(index, [ACTIVATIONS[name] for name in names], x)


@dataclasses.dataclass(frozen=True)
class Layer:
  """One padded dense layer of a chain as a structure uses it.

  Attributes:
    on: whether the layer is active (an inactive hidden layer passes its input through).
    n_in, n_out: the active inputs and units.
  """

  on: jax.Array
  n_in: jax.Array
  n_out: jax.Array


def chain_masks(layers: Sequence[Layer], shapes: Sequence[tuple[int, int]]) -> dict[str, dict[str, jax.Array]]:
  """Masks of a chain's parameters ``{"layer_0": {"w", "b"}, ...}``."""
  return {f"layer_{i}": dense_mask(layer.n_in, layer.n_out, shape, layer.on)
          for i, (layer, shape) in enumerate(zip(layers, shapes))}


def apply_chain(params: Params, masks: Params, x: jax.Array, layers: Sequence[Layer], act: jax.Array,
                names: Sequence[str]) -> jax.Array:
  """Runs the chain: hidden layers with activation ``names[act]``, the last one linear (the caller's head).

  Weights are masked in the forward pass; hidden outputs of inactive units are zeroed; an inactive hidden layer
  leaves ``x`` as it is (its padded width must equal its input's).
  """
  for i, layer in enumerate(layers):
    p, m = params[f"layer_{i}"], masks[f"layer_{i}"]
    z = x @ (p["w"] * m["w"]) + p["b"] * m["b"]
    if i == len(layers) - 1:
      return z
    z = activation(act, z, names) * active(layer.n_out, z.shape[-1])
    # A layer that changes the padded width is always on (the first); only square ones can be skipped.
    x = jnp.where(layer.on > 0, z, x) if z.shape == x.shape else z
  return x


@dataclasses.dataclass(frozen=True)
class DataBank:
  """Several data sets padded to common shapes: per split ``x (D, n_max, F_max)``, ``y (D, n_max)``, and per data
  set its number of examples per split, features and classes (NumPy, so they can also be read on the host)."""

  names: tuple[str, ...]
  x: dict[str, jax.Array]
  y: dict[str, jax.Array]
  count: dict[str, np.ndarray]
  features: np.ndarray
  classes: np.ndarray

  @property
  def max_features(self) -> int:
    return int(self.x["train"].shape[-1])

  @property
  def max_classes(self) -> int:
    return int(self.classes.max())

  def batch(self, key: PRNGKey, split: str, dataset: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """``batch_size`` examples (with replacement) of data set ``dataset`` (a traced index)."""
    n = jnp.asarray(self.count[split])[dataset]
    idx = jax.random.randint(key, (batch_size,), 0, n)
    return self.x[split][dataset, idx], self.y[split][dataset, idx]


def data_bank(names: Sequence[str], data_dir: str | None = None) -> DataBank:
  """Loads ``names`` and pads them into one ``DataBank`` (zeros beyond a data set's features and examples)."""
  loaded = [data.load(name, data_dir) for name in names]
  features = np.asarray([s.train.x.shape[1] for s in loaded])
  classes = np.asarray([data.num_classes(s) for s in loaded])
  xs, ys, counts = {}, {}, {}
  for split in ("train", "outer_valid", "test"):
    parts = [getattr(s, split) for s in loaded]
    n_max = max(p.x.shape[0] for p in parts)
    x = np.zeros((len(parts), n_max, features.max()), np.float32)
    y = np.zeros((len(parts), n_max), np.int32)
    for i, p in enumerate(parts):
      x[i, :p.x.shape[0], :p.x.shape[1]] = np.asarray(p.x)
      y[i, :p.x.shape[0]] = np.asarray(p.y)
    xs[split], ys[split] = jnp.asarray(x), jnp.asarray(y)
    counts[split] = np.asarray([p.x.shape[0] for p in parts])
  return DataBank(tuple(names), xs, ys, counts, features, classes)


def pick(key: PRNGKey, options: Sequence[int] | np.ndarray) -> jax.Array:
  """A uniformly drawn element of ``options`` (int32, traceable)."""
  options = jnp.asarray(np.asarray(options), jnp.int32)
  return options[jax.random.randint(key, (), 0, options.shape[0])]


def draw_widths(key: PRNGKey, choices: Sequence[int], max_depth: int) -> jax.Array:
  """``max_depth`` widths drawn from ``choices`` (those past the structure's depth are unused)."""
  return jax.vmap(lambda k: pick(k, choices))(jax.random.split(key, max_depth))


def cfg_structure(cfg: PyTree) -> dict[str, object]:
  """The structure part of a (host) cfg as plain Python values, for messages and tests."""
  return {k: np.asarray(v).tolist() for k, v in cfg.items() if k != "init_scale" and np.asarray(v).dtype.kind == "i"}
