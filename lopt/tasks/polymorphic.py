"""Structure-polymorphic task families: a fresh structure per task, every structure through one compiled program.

``mlp_structures``, ``autoencoder_structures`` and ``quadratic_structures`` draw, in ``sample(key)``, a structure
(widths, depth, input size, number of classes, batch size, activation, data set) as int32 scalars of the cfg,
inside a padded maximum (``lopt.tasks.padded``). Parameter shapes are the maximum's, so one program trains any
structure and a batch of tasks with different structures is ``vmap``-ped. ``task.mask`` marks the entries the
structure uses; inactive entries get exactly zero gradient, take no part in the loss, and (through ``mask=``, see
``lopt.architectures.masked_stats``) no part in any optimizer's statistics, and are never updated.

``structures`` (a task sampler) mixes these families: every task a worker starts has a fresh structure drawn from
tens of thousands, with one compiled program per family.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import arguments
from lopt.registry import register
from lopt.tasks import padded
from lopt.tasks.base import SPLITS, Task, TaskFamily, TaskSampler, check_family
from lopt.tasks.model_family import ACTIVATIONS, sample_init_scale
from lopt.tasks.samplers import mixture
from lopt.types import PRNGKey, PyTree

WIDTHS: tuple[int, ...] = (4, 8, 12, 16, 24, 32)
BATCH_SIZES: tuple[int, ...] = (8, 16, 32, 64)
ACTIVATION_NAMES: tuple[str, ...] = ("relu", "tanh", "gelu", "silu")
MLP_DATA_SETS: tuple[str, ...] = ("digits", "wine", "breast_cancer")


def _check_common(owner: str, widths: Sequence[int], max_depth: int, batch_sizes: Sequence[int],
                  activations: Sequence[str]) -> tuple[tuple[int, ...], int, tuple[int, ...], tuple[str, ...]]:
  widths = arguments.integers(f"{owner}.widths", widths, minimum=1, allow_empty=False)
  max_depth = arguments.integer(f"{owner}.max_depth", max_depth, minimum=1)
  batch_sizes = arguments.integers(f"{owner}.batch_sizes", batch_sizes, minimum=1, allow_empty=False)
  if isinstance(activations, str) or not activations:
    raise arguments.ArgumentError(f"{owner}.activations", f"must be a non-empty tuple of names, got {activations!r}.")
  activations = tuple(arguments.choice(f"{owner}.activations[{i}]", a, sorted(ACTIVATIONS))
                      for i, a in enumerate(activations))
  return widths, max_depth, batch_sizes, activations


def _depths_and_widths(num_widths: int, max_depth: int, *, ordered: bool = True) -> int:
  """Width tuples of depth 1..max_depth (``ordered=False``: sorted tuples, i.e. multisets)."""
  if ordered:
    return sum(num_widths**d for d in range(1, max_depth + 1))
  return sum(math.comb(num_widths + d - 1, d) for d in range(1, max_depth + 1))


def _example_weights(batch_size: jax.Array, max_batch: int) -> jax.Array:
  """Each padded example's weight in a mean over the structure's ``batch_size`` examples."""
  return padded.active(batch_size, max_batch) / batch_size.astype(jnp.float32)


@register("task_family", "mlp_structures")
def mlp_structures(*, widths: Sequence[int] = WIDTHS, max_depth: int = 3, datasets: Sequence[str] = MLP_DATA_SETS,
                   batch_sizes: Sequence[int] = BATCH_SIZES, activations: Sequence[str] = ACTIVATION_NAMES,
                   data_dir: str | None = None) -> TaskFamily:
  """MLP classifiers of a drawn structure: 1..``max_depth`` hidden layers, each width from ``widths``, a data set
  (its input size and number of classes), a batch size and an activation, padded to the largest of each.

  Returns:
    A family whose cfg holds ``init_scale`` and the structure (``dataset``, ``depth``, ``widths``,
    ``batch_size``, ``activation``, ``num_inputs``, ``num_classes``); params are ``{"layer_i": {"w", "b"}}``;
    losses are normalised by log(num_classes).
  """
  owner = "task_families.mlp_structures"
  widths, max_depth, batch_sizes, activations = _check_common(owner, widths, max_depth, batch_sizes, activations)
  if isinstance(datasets, str) or not datasets:
    raise arguments.ArgumentError(f"{owner}.datasets", f"must be a non-empty tuple of data sets, got {datasets!r}.")
  bank = padded.data_bank(tuple(datasets), data_dir)
  w_max, f_max, c_max, b_max = max(widths), bank.max_features, bank.max_classes, max(batch_sizes)
  shapes = [(f_max, w_max)] + [(w_max, w_max)] * (max_depth - 1) + [(w_max, c_max)]

  def sample(key: PRNGKey) -> PyTree:
    keys = jax.random.split(key, 6)
    dataset = jax.random.randint(keys[0], (), 0, len(datasets))
    return {**sample_init_scale(keys[1]), "dataset": dataset,
            "depth": jax.random.randint(keys[2], (), 1, max_depth + 1),
            "widths": padded.draw_widths(keys[3], widths, max_depth),
            "batch_size": padded.pick(keys[4], batch_sizes),
            "activation": jax.random.randint(keys[5], (), 0, len(activations)),
            "num_inputs": jnp.asarray(bank.features, jnp.int32)[dataset],
            "num_classes": jnp.asarray(bank.classes, jnp.int32)[dataset]}

  def layers(cfg: PyTree) -> list[padded.Layer]:
    depth, sizes = cfg["depth"], cfg["widths"]
    hidden = [padded.Layer(on=i < depth, n_in=cfg["num_inputs"] if i == 0 else sizes[i - 1], n_out=sizes[i])
              for i in range(max_depth)]
    return hidden + [padded.Layer(on=jnp.asarray(True), n_in=sizes[depth - 1], n_out=cfg["num_classes"])]

  def task(cfg: PyTree) -> Task:
    chain = layers(cfg)
    mask = padded.chain_masks(chain, shapes)
    classes = padded.active(cfg["num_classes"], c_max)

    def init(key: PRNGKey) -> PyTree:
      keys = jax.random.split(key, len(chain))
      return {name: padded.init_dense(k, m, cfg["init_scale"]) for k, (name, m) in zip(keys, mask.items())}

    def logits(params: PyTree, x: jax.Array) -> jax.Array:
      out = padded.apply_chain(params, mask, x, chain, cfg["activation"], activations)
      return jnp.where(classes > 0, out, -1e9)  # inactive classes get no probability

    def batch(key: PRNGKey, split: str) -> tuple[jax.Array, jax.Array]:
      if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}'. Splits: {', '.join(SPLITS)}.")
      return bank.batch(key, split, cfg["dataset"], b_max)

    def loss(params: PyTree, key: PRNGKey, examples: tuple[jax.Array, jax.Array]) -> jax.Array:
      del key  # deterministic model
      x, y = examples
      per_example = optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y)
      return jnp.sum(per_example * _example_weights(cfg["batch_size"], b_max))

    def accuracy(params: PyTree, examples: tuple[jax.Array, jax.Array]) -> jax.Array:
      x, y = examples
      hits = (jnp.argmax(logits(params, x), axis=-1) == y).astype(jnp.float32)
      return jnp.sum(hits * _example_weights(cfg["batch_size"], b_max))

    normalizer = jnp.log(cfg["num_classes"].astype(jnp.float32))
    return Task(init=init, loss=loss, batch=batch, normalize=lambda value: value / normalizer, accuracy=accuracy,
                mask=mask)

  count = _depths_and_widths(len(widths), max_depth) * len(datasets) * len(batch_sizes) * len(activations)
  name = (f"mlp_structures_{'-'.join(datasets)}_w{'x'.join(map(str, widths))}_d{max_depth}"
          f"_b{'x'.join(map(str, batch_sizes))}_{'-'.join(activations)}")
  return TaskFamily(name=name, sample=sample, task=task, num_structures=count)


@register("task_family", "autoencoder_structures")
def autoencoder_structures(*, widths: Sequence[int] = WIDTHS, max_depth: int = 3,
                           input_sizes: Sequence[int] = (16, 32, 48, 64), batch_sizes: Sequence[int] = BATCH_SIZES,
                           activations: Sequence[str] = ACTIVATION_NAMES, dataset: str = "digits",
                           data_dir: str | None = None) -> TaskFamily:
  """MLP autoencoders of a drawn structure: encoder widths (1..``max_depth`` layers, sorted widest first, the last
  the code), the mirrored decoder, the first ``input_size`` features of ``dataset`` (features in [0, 1]), a batch
  size and an activation; sigmoid output, mean squared error over the active features and examples.

  Returns:
    A family whose losses are normalised by the error of predicting 0.5 on the active features.
  """
  owner = "task_families.autoencoder_structures"
  widths, max_depth, batch_sizes, activations = _check_common(owner, widths, max_depth, batch_sizes, activations)
  bank = padded.data_bank((dataset,), data_dir)
  f_max = bank.max_features
  input_sizes = arguments.integers(f"{owner}.input_sizes", input_sizes, minimum=1, allow_empty=False)
  if max(input_sizes) > f_max:
    raise arguments.ArgumentError(f"{owner}.input_sizes", f"{max(input_sizes)} exceeds the {f_max} features of "
                                  f"'{dataset}'.")
  w_max, b_max = max(widths), max(batch_sizes)
  # Encoder layers, decoder layers (one fewer), the output layer.
  shapes = [(f_max, w_max)] + [(w_max, w_max)] * (2 * max_depth - 2) + [(w_max, f_max)]
  baseline = jnp.asarray(np.mean((np.asarray(bank.x["train"][0, :bank.count["train"][0]]) - 0.5)**2, axis=0))

  def sample(key: PRNGKey) -> PyTree:
    keys = jax.random.split(key, 6)
    return {**sample_init_scale(keys[0]), "depth": jax.random.randint(keys[1], (), 1, max_depth + 1),
            "widths": -jnp.sort(-padded.draw_widths(keys[2], widths, max_depth)),
            "num_inputs": padded.pick(keys[3], input_sizes), "batch_size": padded.pick(keys[4], batch_sizes),
            "activation": jax.random.randint(keys[5], (), 0, len(activations))}

  def layers(cfg: PyTree) -> list[padded.Layer]:
    depth, sizes, n = cfg["depth"], cfg["widths"], cfg["num_inputs"]
    encoder = [padded.Layer(on=i < depth, n_in=n if i == 0 else sizes[i - 1], n_out=sizes[i])
               for i in range(max_depth)]
    # Decoder layer j mirrors encoder layer depth - 2 - j (clipped indices are unused when the layer is off).
    decoder = [padded.Layer(on=j < depth - 1, n_in=sizes[jnp.clip(depth - 1 - j, 0, max_depth - 1)],
                            n_out=sizes[jnp.clip(depth - 2 - j, 0, max_depth - 1)]) for j in range(max_depth - 1)]
    return encoder + decoder + [padded.Layer(on=jnp.asarray(True), n_in=sizes[0], n_out=n)]

  def task(cfg: PyTree) -> Task:
    chain = layers(cfg)
    mask = padded.chain_masks(chain, shapes)
    features = padded.active(cfg["num_inputs"], f_max)
    weights = features[None, :] * _example_weights(cfg["batch_size"], b_max)[:, None] / cfg["num_inputs"]
    normalizer = jnp.sum(baseline * features) / cfg["num_inputs"]

    def init(key: PRNGKey) -> PyTree:
      keys = jax.random.split(key, len(chain))
      return {name: padded.init_dense(k, m, cfg["init_scale"]) for k, (name, m) in zip(keys, mask.items())}

    def batch(key: PRNGKey, split: str) -> jax.Array:
      if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}'. Splits: {', '.join(SPLITS)}.")
      return bank.batch(key, split, jnp.zeros([], jnp.int32), b_max)[0] * features

    def loss(params: PyTree, key: PRNGKey, x: jax.Array) -> jax.Array:
      del key
      out = jax.nn.sigmoid(padded.apply_chain(params, mask, x, chain, cfg["activation"], activations))
      return jnp.sum(jnp.square(out - x) * weights)

    return Task(init=init, loss=loss, batch=batch, normalize=lambda value: value / normalizer, mask=mask)

  count = (_depths_and_widths(len(widths), max_depth, ordered=False) * len(input_sizes) * len(batch_sizes)
           * len(activations))
  name = (f"autoencoder_structures_{dataset}_w{'x'.join(map(str, widths))}_d{max_depth}"
          f"_in{'x'.join(map(str, input_sizes))}_b{'x'.join(map(str, batch_sizes))}_{'-'.join(activations)}")
  return TaskFamily(name=name, sample=sample, task=task, num_structures=count)


@register("task_family", "quadratic_structures")
def quadratic_structures(*, max_dim: int = 64, min_scales: Sequence[float] = (1e-3, 1e-2, 0.1),
                         max_scales: Sequence[float] = (1.0, 10.0, 100.0),
                         noise_stds: Sequence[float] = (0.0, 0.1, 0.5)) -> TaskFamily:
  """Diagonal quadratics (as ``quadratic``) of a drawn dimension 1..``max_dim``, curvature range and noise.

  Returns:
    A family whose params are ``{"x": [max_dim]}`` with the first ``dim`` entries active.
  """
  owner = "task_families.quadratic_structures"
  max_dim = arguments.integer(f"{owner}.max_dim", max_dim, minimum=1)
  min_scales = arguments.reals(f"{owner}.min_scales", min_scales, minimum=0.0, open_minimum=True, allow_empty=False)
  max_scales = arguments.reals(f"{owner}.max_scales", max_scales, minimum=max(min_scales), allow_empty=False)
  noise_stds = arguments.reals(f"{owner}.noise_stds", noise_stds, minimum=0.0, allow_empty=False)

  def sample(key: PRNGKey) -> PyTree:
    keys = jax.random.split(key, 6)
    low = jnp.asarray(min_scales, jnp.float32)[jax.random.randint(keys[0], (), 0, len(min_scales))]
    high = jnp.asarray(max_scales, jnp.float32)[jax.random.randint(keys[1], (), 0, len(max_scales))]
    u = jax.random.uniform(keys[2], (max_dim,))
    return {"dim": jax.random.randint(keys[3], (), 1, max_dim + 1),
            "scales": jnp.exp(jnp.log(low) + u * (jnp.log(high) - jnp.log(low))),
            "center": jax.random.normal(keys[4], (max_dim,)),
            "noise": jnp.asarray(noise_stds, jnp.float32)[jax.random.randint(keys[5], (), 0, len(noise_stds))]}

  def task(cfg: PyTree) -> Task:
    on = padded.active(cfg["dim"], max_dim)
    mask = {"x": on}
    dim = cfg["dim"].astype(jnp.float32)

    def init(key: PRNGKey) -> PyTree:
      return {"x": jax.random.normal(key, (max_dim,)) * on}

    def batch(key: PRNGKey, split: str) -> jax.Array:
      if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}'. Splits: {', '.join(SPLITS)}.")
      return cfg["noise"] * jax.random.normal(key, (max_dim,))

    def loss(params: PyTree, key: PRNGKey, noise: jax.Array) -> jax.Array:
      del key
      return 0.5 * jnp.sum(on * cfg["scales"] * (params["x"] * on - cfg["center"] - noise)**2) / dim

    mean_scale = jnp.sum(on * cfg["scales"]) / dim
    return Task(init=init, loss=loss, batch=batch, normalize=lambda value: value / mean_scale, mask=mask)

  count = max_dim * len(min_scales) * len(max_scales) * len(noise_stds)
  name = f"quadratic_structures_d{max_dim}_s{'-'.join(f'{s:g}' for s in min_scales + max_scales)}" \
         f"_n{'-'.join(f'{s:g}' for s in noise_stds)}"
  return TaskFamily(name=name, sample=sample, task=task, num_structures=count)


@register("task_sampler", "structures")
def structures(task_families: Sequence[TaskFamily] | None = None,
               weights: Sequence[float] | None = None) -> TaskSampler:
  """Mixes structure-polymorphic families: each task a worker starts draws a fresh structure, and each family
  compiles one program whatever the structure.

  Args:
    task_families: the families (default: ``mlp_structures()``, ``autoencoder_structures()`` and
      ``quadratic_structures()``, over 19,000 structures together).
    weights: relative probability of each family (default: proportional to its number of structures).

  Returns:
    A sampler over the families; its name gives the number of structures they span together.
  """
  if task_families is None:
    families = (mlp_structures(), autoencoder_structures(), quadratic_structures())
  elif isinstance(task_families, (str, bytes)) or not isinstance(task_families, Sequence):
    raise arguments.ArgumentError("task_samplers.structures.task_families", "must be a list of task families, "
                                  f"e.g. [@task_families.mlp_structures()], got {task_families!r}.")
  else:
    families = tuple(check_family(f"task_samplers.structures.task_families[{i}]", f)
                     for i, f in enumerate(task_families))
  if weights is not None:
    weights = arguments.reals("task_samplers.structures.weights", weights, minimum=0.0, open_minimum=True)
    if len(weights) != len(families):
      raise arguments.ArgumentError("task_samplers.structures.weights", f"must hold one weight per family "
                                    f"({len(families)}), got {len(weights)}.")
  base = mixture(families, weights if weights is not None else [float(f.num_structures) for f in families])
  total = sum(f.num_structures for f in base.families)
  return TaskSampler(name=f"structures(n={total},{base.name})", families=base.families, sample=base.sample)
