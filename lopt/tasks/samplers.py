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

from typing import Callable, NamedTuple, Sequence

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


class Structure(NamedTuple):
  """What makes two drawn tasks different programs: the unit ``parametric`` counts and deduplicates.

  Attributes:
    architecture: the kind of task, with its cell or attention heads where it has them (``"char_rnn_lstm"``).
    widths: layer widths (or the quadratic's dimension); their number is the depth.
    activation: the networks' activation; None where the kind has none to choose.
    data: data set, corpus or test function; for quadratics the curvature range and noise (their "data").
    batch_size: examples per batch as trained (after ``reduced_batch``); None for batch-free kinds.
  """

  architecture: str
  widths: tuple[int, ...]
  activation: str | None
  data: str | None
  batch_size: int | None


def draw_structure(rng: np.random.Generator, kinds: Sequence[str] = KINDS,
                   augment_probability: float = 0.3) -> tuple[Structure, Callable[[], TaskFamily]]:
  """Draws one random task structure: kind, then its sizes, activation, data set, batch size, augmentation.

  Returns:
    The structure and a function building its family (building loads data, so only kept structures are built).
  """
  kind = kinds[rng.integers(len(kinds))]
  pick = lambda options: options[rng.integers(len(options))]
  depth = int(rng.integers(1, 3))
  widths = tuple(int(pick(WIDTHS)) for _ in range(depth))
  batch_size = int(pick(BATCH_SIZES))
  activation = str(pick(ACTIVATION_CHOICES))
  if kind == "quadratic":
    dim, low, high = int(pick((4, 8, 16, 32))), float(pick((1e-3, 1e-2, 0.1))), float(pick((1.0, 10.0, 100.0)))
    noise = float(pick((0.0, 0.0, 0.1, 0.5)))
    structure = Structure(kind, (dim,), None, f"scales{low:g}-{high:g},noise{noise:g}", None)
    build = lambda: quadratic(dim, min_scale=low, max_scale=high, noise_std=noise)
  elif kind == "classic_2d":
    function, noise = str(pick(sorted(FUNCTIONS))), float(pick((0.0, 0.0, 0.01)))
    structure = Structure(kind, (), None, f"{function},noise{noise:g}", None)
    build = lambda: classic_2d(function, noise_std=noise)
  elif kind == "image_mlp":
    dataset = str(pick(MLP_DATA_SETS))
    structure = Structure(kind, widths, activation, dataset, batch_size)
    build = lambda: image_mlp(hidden_sizes=widths, dataset=dataset, batch_size=batch_size, activation=activation)
  elif kind == "image_conv":
    channels = tuple(min(w, 16) for w in widths)
    structure = Structure(kind, channels, activation, "digits", batch_size)
    build = lambda: image_conv(channels=channels, batch_size=batch_size, activation=activation)
  elif kind == "autoencoder":
    sizes = tuple(sorted(widths, reverse=True))
    structure = Structure(kind, sizes, activation, "digits", batch_size)
    build = lambda: autoencoder(hidden_sizes=sizes, batch_size=batch_size, activation=activation)
  elif kind == "char_rnn":
    cell, hidden, seq_len, batch_size = str(pick(("gru", "lstm"))), int(pick(WIDTHS)), int(pick((8, 16))), \
        int(pick((4, 8, 16)))
    structure = Structure(f"{kind}_{cell}", (hidden,), None, "grammar", batch_size)
    build = lambda: char_rnn(cell=cell, hidden_size=hidden, seq_len=seq_len, batch_size=batch_size)
  elif kind == "transformer_lm":
    width, heads, seq_len, batch_size = int(pick((16, 32))), int(pick((1, 2))), int(pick((8, 16))), \
        int(pick((4, 8, 16)))
    structure = Structure(f"{kind}_h{heads}", (width,) * depth, None, "grammar", batch_size)
    build = lambda: transformer_lm(width=width, depth=depth, num_heads=heads, seq_len=seq_len,
                                   batch_size=batch_size)
  else:
    raise ValueError(f"Unknown task kind '{kind}'. Kinds: {', '.join(KINDS)}.")
  if rng.random() < augment_probability:
    choice = pick(AUGMENTATIONS[2:])
    base = build
    if choice == "reparametrize":
      build = lambda: augment.reparametrize(base())
    elif choice == "bfloat16":
      build = lambda: augment.bfloat16(base())
    elif kind not in ("quadratic", "classic_2d"):  # reduced_batch needs a leading batch axis.
      reduced = max(2, structure.batch_size // 4)
      structure = structure._replace(batch_size=reduced)
      build = lambda: augment.reduced_batch(base(), batch_size=reduced)
  return structure, build


# Draws per requested structure before ``parametric`` gives up on finding new ones (a small space of kinds).
MAX_DRAWS_PER_STRUCTURE = 50


def draw_pool(num_structures: int, seed: int, kinds: Sequence[str] = KINDS, augment_probability: float = 0.3
              ) -> list[tuple[Structure, Callable[[], TaskFamily]]]:
  """``num_structures`` distinct structures drawn deterministically from ``seed`` (repeats are redrawn).

  Raises:
    ArgumentError: when the kinds allow fewer distinct structures than asked for.
  """
  rng = np.random.default_rng(seed)
  pool: dict[Structure, Callable[[], TaskFamily]] = {}
  for _ in range(MAX_DRAWS_PER_STRUCTURE * num_structures):
    if len(pool) == num_structures:
      break
    structure, build = draw_structure(rng, tuple(kinds), augment_probability)
    pool.setdefault(structure, build)
  if len(pool) < num_structures:
    raise arguments.ArgumentError("task_samplers.parametric.num_structures", f"only {len(pool)} distinct "
                                  f"structures of kinds {', '.join(kinds)} were found in "
                                  f"{MAX_DRAWS_PER_STRUCTURE * num_structures} draws, {num_structures} asked for; "
                                  "ask for fewer or allow more kinds.")
  return list(pool.items())


@register("task_sampler", "parametric")
def parametric(*, num_structures: int = 16, seed: int = 0, kinds: Sequence[str] = KINDS,
               augment_probability: float = 0.3) -> TaskSampler:
  """Uniform over a pool of ``num_structures`` randomly drawn task structures.

  The pool is drawn once, deterministically from ``seed``: ``num_structures`` distinct ``Structure``s (a repeat
  is redrawn), each built once. ``sample(key)`` picks a member uniformly; the picked family's ``sample`` then draws
  the task's continuous configuration (initial scale, curvatures, starting point, ...), which is variety within a
  structure, not a structure of its own.

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
  families = tuple(build() for _, build in draw_pool(num_structures, seed, kinds, augment_probability))
  return TaskSampler(name=f"parametric(n={len(families)},seed={seed})", families=families,
                     sample=_chooser(families, np.ones(len(families))))
