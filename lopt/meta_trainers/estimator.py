"""The ``GradientEstimator`` interface: a small frozen value made by a factory, the way optax builds transformations.

An estimator is a ``NamedTuple`` of pure functions plus what the outer loop needs to know about it; factories
(``pes(...)``, ``tbptt(...)``, ``es(...)``, ``combined(...)``) validate their settings and close over them. The
learned optimizer and the task family are passed to each call as keyword arguments, so one estimator value serves
every family a sampler yields (``meta_train`` compiles and caches one jitted ``estimate`` per family). Variations
are new factories or wrappers (``combined``), never subclasses.

Sharding: ``meta_train`` splits the state over the devices of a ``tasks`` mesh axis along the axis each leaf's
``task_axes`` names; the estimator's code stays single-device (GSPMD partitions its ``vmap`` over tasks).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol

import jax

from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers.unroll import TaskState
from lopt.tasks.base import TaskFamily
from lopt.types import MetaParams, PRNGKey, PyTree

EstimatorState = PyTree


class InitFn(Protocol):
  """``init(theta, key, *, task_family, learned_optimizer) -> state``: inner states of a batch of tasks,
  horizons, accumulators."""

  def __call__(self, theta: MetaParams, key: PRNGKey, *, task_family: TaskFamily,
               learned_optimizer: LearnedOptimizer) -> EstimatorState:
    ...


class EstimateFn(Protocol):
  """``estimate(theta, state, key, *, task_family, learned_optimizer) -> (meta_grad, new_state, metrics)``;
  metrics are scalars (jax arrays) and include ``meta_loss`` and ``masked_tasks``."""

  def __call__(self, theta: MetaParams, state: EstimatorState, key: PRNGKey, *, task_family: TaskFamily,
               learned_optimizer: LearnedOptimizer) -> tuple[MetaParams, EstimatorState, dict[str, Any]]:
    ...


def default_task_axes(state: EstimatorState) -> PyTree:
  """For each leaf of ``state``, the axis that indexes tasks (split over devices), or None for a shared leaf.

  Reads the layout lopt's estimators document, not the shapes: inside a ``TaskState`` (a batch of inner states) the
  task axis is the last of the leading batch axes, ``step.ndim - 1``, because the per-task ``step`` counter is a
  scalar per task (antithetic estimators put the perturbation sign before the task axis); every other array leaf
  has its task axis first (e.g. PES's accumulators); scalars are shared. States that are tuples of other
  estimators' states get the right answer leaf by leaf.

  Args:
    state: a state from ``init`` (arrays or ``jax.ShapeDtypeStruct`` leaves).

  Returns:
    A pytree with the structure of ``state`` whose leaves are ints or None.
  """

  def axes(node):
    if isinstance(node, TaskState):
      task_axis = jax.numpy.ndim(node.step) - 1
      return jax.tree.map(lambda x: task_axis if jax.numpy.ndim(x) > task_axis >= 0 else None, node)
    return 0 if jax.numpy.ndim(node) >= 1 else None

  return jax.tree.map(axes, state, is_leaf=lambda node: isinstance(node, TaskState))


class GradientEstimator(NamedTuple):
  """Estimates the gradient of a meta-objective with respect to theta.

  Attributes:
    name: the estimator's name (a registered plugin name for built-in ones); prefixes the metrics of its parts in
      ``combined``.
    num_tasks: inner tasks trained in parallel (the length of the task axis of the state, see ``task_axes``).
    init: creates the persistent state (``InitFn``).
    estimate: one meta-gradient estimate (``EstimateFn``).
    task_axes: ``state -> pytree of int | None``: which axis of each state leaf indexes tasks.
    settings: the validated hyperparameters (e.g. a ``truncation.Truncation``), for messages and tests.
  """

  name: str
  num_tasks: int
  init: InitFn
  estimate: EstimateFn
  task_axes: Callable[[EstimatorState], PyTree] = default_task_axes
  settings: Any = None


__all__ = ["EstimateFn", "EstimatorState", "GradientEstimator", "InitFn", "default_task_axes"]
