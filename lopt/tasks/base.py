"""Inner training problems: ``Task`` and ``TaskFamily``.

A ``Task`` is a bundle of pure functions. A ``TaskFamily`` is a distribution over tasks whose parameters share
shapes, so that a batch of tasks built from sampled configurations can be ``vmap``-ped: ``family.sample(key)``
returns a configuration (a pytree of arrays) and ``family.task(cfg)`` the task it describes.

Batches are drawn inside ``jit`` from in-memory arrays by ``task.batch(key, split)``: a batch is a pure function of
its key, so data streams are deterministic and resuming a run only needs the RNG state.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import jax

from lopt import arguments
from lopt.types import Batch, Params, PRNGKey, PyTree

Split = Literal["train", "outer_valid", "test"]
SPLITS: tuple[str, ...] = ("train", "outer_valid", "test")


@dataclasses.dataclass(frozen=True)
class Task:
  """One inner training problem.

  Attributes:
    init: ``init(key) -> params``.
    loss: ``loss(params, key, batch) -> scalar``; the key serves stochastic models (dropout, noise).
    batch: ``batch(key, split) -> batch`` with ``split`` one of ``SPLITS``.
    normalize: maps a loss to a scale comparable across tasks and families (about 1 at initialisation).
    accuracy: optional ``accuracy(params, batch) -> scalar`` for classification tasks.
    mask: for a task padded to a larger structure (``lopt.tasks.polymorphic``), a pytree of 0/1 arrays shaped
      like the parameters marking the active entries; inner loops pass it to the optimizer as ``mask=`` (see
      ``lopt.architectures.masked_stats``). None: every entry is active.
  """

  init: Callable[[PRNGKey], Params]
  loss: Callable[[Params, PRNGKey, Batch], jax.Array]
  batch: Callable[[PRNGKey, str], Batch]
  normalize: Callable[[jax.Array], jax.Array]
  accuracy: Callable[[Params, Batch], jax.Array] | None = None
  mask: Params | None = None


@dataclasses.dataclass(frozen=True)
class TaskFamily:
  """A distribution over tasks with shared parameter shapes.

  Attributes:
    name: a name unique per distinct structure; estimators compile once per name.
    sample: ``sample(key) -> cfg`` (a pytree of arrays, so configurations can be batched).
    task: ``task(cfg) -> Task``; must be traceable (it is called under ``vmap``/``jit``).
    num_structures: how many distinct structures ``sample`` draws from (1 for a fixed structure; more for the
      structure-polymorphic families of ``lopt.tasks.polymorphic``, whose tasks carry a ``mask``).
  """

  name: str
  sample: Callable[[PRNGKey], PyTree]
  task: Callable[[PyTree], Task]
  num_structures: int = 1


@dataclasses.dataclass(frozen=True)
class TaskSampler:
  """Chooses which family to train next: ``sample(key) -> TaskFamily``.

  Attributes:
    name: display name.
    families: every family the sampler can return (so callers can compile or evaluate them up front).
    sample: ``sample(key) -> TaskFamily``; runs in Python, outside ``jit``.
  """

  name: str
  families: tuple[TaskFamily, ...]
  sample: Callable[[PRNGKey], TaskFamily]


def check_family(name: str, value: object) -> TaskFamily:
  """``value`` if it is a ``TaskFamily``; ``name`` is the argument as a gin binding spells it."""
  if not isinstance(value, TaskFamily):
    raise arguments.ArgumentError(name, f"must be a task family, e.g. @task_families.quadratic() (with the "
                                  f"parentheses), got {value!r} ({type(value).__name__}).")
  return value
