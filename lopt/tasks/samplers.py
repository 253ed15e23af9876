"""Task samplers: which task family a worker trains next.

``fixed`` always returns one family, ``mixture`` draws from several with given weights and ``parametric`` draws
from a pool of randomly generated structures (architectures, widths, depths, activations, data sets, batch sizes
and augmentations, in the spirit of VeLO's and TaskSet's task distributions).

Callers compile one program per family ``name`` and keep per-family state (``meta_train`` keeps one estimator
state per family), so a sampler's ``families`` is a finite tuple fixed at construction and ``sample`` only ever
returns members of it. ``parametric`` therefore draws its pool of structures once, deterministically from its
seed; variety within a structure comes from each family's own sampled ``cfg``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from lopt import arguments
from lopt.registry import register
from lopt.tasks import augment
from lopt.tasks.autoencoder import autoencoder
from lopt.tasks.base import TaskFamily, TaskSampler, check_family
from lopt.tasks.char_rnn import char_rnn
from lopt.tasks.classic_2d import FUNCTIONS, classic_2d
from lopt.tasks.image_conv import image_conv
from lopt.tasks.image_mlp import image_mlp
from lopt.tasks.quadratic import quadratic
from lopt.tasks.transformer_lm import transformer_lm
from lopt.types import PRNGKey


@register("task_sampler", "fixed")
def fixed(task_family: TaskFamily) -> TaskSampler:
  """Always returns the one given task family.

  Args:
    task_family: the family to train on.

  Returns:
    A sampler whose ``families`` is ``(task_family,)``.
  """
  task_family = check_family("task_samplers.fixed.task_family", task_family)

  def sample(key: PRNGKey) -> TaskFamily:
    del key  # Nothing to choose.
    return task_family

  return TaskSampler(name=f"fixed({task_family.name})", families=(task_family,), sample=sample)


def _chooser(families: tuple[TaskFamily, ...], weights: np.ndarray) -> Callable[[PRNGKey], TaskFamily]:
  """Picks a family on the host: a NumPy generator seeded by the key's bits, so the same key picks the same one.

  The outer loop calls this every step on the host. Drawing with ``jax.random.choice`` would dispatch a device
  computation and wait for its result (one more round trip per step); reading the key's two words is all the
  device work needed here.
  """
  cumulative = np.cumsum(weights / weights.sum())

  def sample(key: PRNGKey) -> TaskFamily:
    bits = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    seed = np.asarray(bits).ravel()
    uniform = np.random.default_rng(seed).random()
    return families[min(int(np.searchsorted(cumulative, uniform, side="right")), len(families) - 1)]

  return sample


@register("task_sampler", "mixture")
def mixture(task_families: Sequence[TaskFamily], weights: Sequence[float] | None = None) -> TaskSampler:
  """Draws one of ``task_families`` with probability proportional to ``weights`` (uniform by default).

  Raises:
    ValueError: for no families, duplicate family names, or weights that are not positive or do not match.
  """
  owner = "task_samplers.mixture"
  if isinstance(task_families, (str, bytes)) or not isinstance(task_families, Sequence):
    raise arguments.ArgumentError(f"{owner}.task_families", "must be a list of task families, e.g. "
                                  f"[@task_families.quadratic(), @task_families.image_mlp()], got {task_families!r}.")
  families = tuple(check_family(f"{owner}.task_families[{i}]", f) for i, f in enumerate(task_families))
  if not families:
    raise arguments.ArgumentError(f"{owner}.task_families", "must hold at least one task family.")
  names = [f.name for f in families]
  if len(set(names)) != len(names):
    raise ValueError(f"mixture needs distinct family names (they key compiled code), got {names}.")
  if weights is not None:
    weights = arguments.reals(f"{owner}.weights", weights, minimum=0.0, open_minimum=True)
    if len(weights) != len(families):
      raise arguments.ArgumentError(f"{owner}.weights", f"must hold one weight per family ({len(families)}), "
                                    f"got {len(weights)}.")
  weights = np.ones(len(families)) if weights is None else np.asarray(weights, np.float64)
  summary = ", ".join(f"{n}:{w:g}" for n, w in zip(names, weights))
  return TaskSampler(name=f"mixture({summary})", families=families, sample=_chooser(families, weights))


# Choices the parametric sampler draws from; every combination builds quickly (no compilation at construction).
KINDS: tuple[str, ...] = ("quadratic", "classic_2d", "image_mlp", "image_conv", "autoencoder", "char_rnn",
                          "transformer_lm")
WIDTHS: tuple[int, ...] = (8, 16, 32, 64)
ACTIVATION_CHOICES: tuple[str, ...] = ("relu", "tanh", "gelu", "silu")
BATCH_SIZES: tuple[int, ...] = (8, 16, 32, 64)
MLP_DATA_SETS: tuple[str, ...] = ("digits", "wine", "breast_cancer")
AUGMENTATIONS: tuple[str, ...] = ("none", "none", "reparametrize", "reduced_batch", "bfloat16")


def draw_structure(rng: np.random.Generator, kinds: Sequence[str] = KINDS,
                   augment_probability: float = 0.3) -> TaskFamily:
  """Builds one random task family: kind, then its sizes, activation, data set, batch size, augmentation."""
  kind = kinds[rng.integers(len(kinds))]
  pick = lambda options: options[rng.integers(len(options))]
  depth = int(rng.integers(1, 3))
  widths = tuple(int(pick(WIDTHS)) for _ in range(depth))
  batch_size = int(pick(BATCH_SIZES))
  if kind == "quadratic":
    family = quadratic(int(pick((4, 8, 16, 32))), min_scale=float(pick((1e-3, 1e-2, 0.1))),
                       max_scale=float(pick((1.0, 10.0, 100.0))), noise_std=float(pick((0.0, 0.0, 0.1, 0.5))))
  elif kind == "classic_2d":
    family = classic_2d(pick(sorted(FUNCTIONS)), noise_std=float(pick((0.0, 0.0, 0.01))))
  elif kind == "image_mlp":
    family = image_mlp(hidden_sizes=widths, dataset=pick(MLP_DATA_SETS), batch_size=batch_size,
                       activation=pick(ACTIVATION_CHOICES))
  elif kind == "image_conv":
    family = image_conv(channels=tuple(min(w, 16) for w in widths), batch_size=batch_size,
                        activation=pick(ACTIVATION_CHOICES))
  elif kind == "autoencoder":
    family = autoencoder(hidden_sizes=tuple(sorted(widths, reverse=True)), batch_size=batch_size,
                         activation=pick(ACTIVATION_CHOICES))
  elif kind == "char_rnn":
    family = char_rnn(cell=pick(("gru", "lstm")), hidden_size=int(pick(WIDTHS)), seq_len=int(pick((8, 16))),
                      batch_size=int(pick((4, 8, 16))))
  elif kind == "transformer_lm":
    family = transformer_lm(width=int(pick((16, 32))), depth=depth, num_heads=int(pick((1, 2))),
                            seq_len=int(pick((8, 16))), batch_size=int(pick((4, 8, 16))))
  else:
    raise ValueError(f"Unknown task kind '{kind}'. Kinds: {', '.join(KINDS)}.")
  if rng.random() < augment_probability:
    choice = pick(AUGMENTATIONS[2:])
    if choice == "reparametrize":
      family = augment.reparametrize(family)
    elif choice == "bfloat16":
      family = augment.bfloat16(family)
    elif kind not in ("quadratic", "classic_2d"):  # reduced_batch needs a leading batch axis.
      family = augment.reduced_batch(family, batch_size=max(2, batch_size // 4))
  return family


@register("task_sampler", "parametric")
def parametric(*, num_structures: int = 16, seed: int = 0, kinds: Sequence[str] = KINDS,
               augment_probability: float = 0.3) -> TaskSampler:
  """Uniform over a pool of ``num_structures`` randomly drawn task structures.

  The pool is drawn once, deterministically from ``seed`` (each structure is built once; duplicates are dropped,
  so the pool may be slightly smaller). ``sample(key)`` picks a member uniformly; the picked family's ``sample``
  then draws the task's continuous configuration (initial scale, curvatures, starting point, ...).

  Args:
    num_structures: how many structures to draw (the number of compiled programs a run may need).
    seed: seeds the pool.
    kinds: which kinds of task to draw from (a subset of ``KINDS``).
    augment_probability: probability that a drawn structure is wrapped by one augmentation.

  Returns:
    A sampler whose ``families`` is the pool.
  """
  owner = "task_samplers.parametric"
  num_structures = arguments.integer(f"{owner}.num_structures", num_structures, minimum=1)
  seed = arguments.integer(f"{owner}.seed", seed, minimum=0)
  augment_probability = arguments.real(f"{owner}.augment_probability", augment_probability, minimum=0.0,
                                       maximum=1.0)
  if isinstance(kinds, str) or not isinstance(kinds, Sequence) or not kinds:
    raise arguments.ArgumentError(f"{owner}.kinds", f"must be a non-empty tuple of task kinds ({', '.join(KINDS)}), "
                                  f"got {kinds!r}.")
  kinds = tuple(arguments.choice(f"{owner}.kinds[{i}]", kind, KINDS) for i, kind in enumerate(kinds))
  rng = np.random.default_rng(seed)
  pool: dict[str, TaskFamily] = {}
  for _ in range(num_structures):
    family = draw_structure(rng, tuple(kinds), augment_probability)
    pool.setdefault(family.name, family)
  families = tuple(pool.values())
  return TaskSampler(name=f"parametric(n={len(families)},seed={seed})", families=families,
                     sample=_chooser(families, np.ones(len(families))))
