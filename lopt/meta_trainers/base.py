"""The ``GradientEstimator`` interface.

An estimator holds only its hyperparameters. The learned optimizer and the task family are passed to each call as
keyword arguments, so one estimator object serves every family a sampler yields (``meta_train`` compiles and caches
one jitted ``estimate`` per family).

Sharding: ``meta_train`` splits the state over the devices of a ``tasks`` mesh axis along the axis each leaf's
``task_axes`` names; the estimator's code stays single-device (GSPMD partitions its ``vmap`` over tasks).
"""

from __future__ import annotations

import abc
from typing import Any

import jax

from lopt.architectures.base import LearnedOptimizer
from lopt.tasks.base import TaskFamily
from lopt.types import MetaParams, Metrics, PRNGKey, PyTree

EstimatorState = PyTree


class GradientEstimator(abc.ABC):
  """Estimates the gradient of a meta-objective with respect to theta."""

  @property
  @abc.abstractmethod
  def num_tasks(self) -> int:
    """Number of inner tasks trained in parallel (the leading axis of the state, see ``task_axes``)."""

  @abc.abstractmethod
  def init(self, theta: MetaParams, key: PRNGKey, *, task_family: TaskFamily,
           learned_optimizer: LearnedOptimizer) -> EstimatorState:
    """Creates the persistent state: inner states of a batch of tasks, horizons, accumulators."""

  @abc.abstractmethod
  def estimate(self, theta: MetaParams, state: EstimatorState, key: PRNGKey, *, task_family: TaskFamily,
               learned_optimizer: LearnedOptimizer) -> tuple[MetaParams, EstimatorState, dict[str, Any]]:
    """Returns ``(meta_grad, new_state, metrics)``; metrics are scalars (jax arrays)."""

  def task_axes(self, state: EstimatorState) -> PyTree:
    """For each leaf of ``state``, the axis that indexes tasks (split over devices), or None for a shared leaf.

    The default reads the layout lopt's estimators document, not the shapes: inside an ``unroll.TaskState`` (a
    batch of inner states) the task axis is the last of the leading batch axes, ``step.ndim - 1``, because the
    per-task ``step`` counter is a scalar per task (antithetic estimators put the perturbation sign before the
    task axis); every other array leaf has its task axis first (e.g. PES's accumulators); scalars are shared.
    Wrappers whose states are tuples of other estimators' states get the right answer leaf by leaf. Override it
    when a state holds a non-scalar array that all tasks share.

    Args:
      state: a state from ``init`` (arrays or ``jax.ShapeDtypeStruct`` leaves).

    Returns:
      A pytree with the structure of ``state`` whose leaves are ints or None.
    """
    from lopt.meta_trainers.unroll import TaskState  # pylint: disable=g-import-not-at-top  # unroll imports base.

    def axes(node):
      if isinstance(node, TaskState):
        task_axis = jax.numpy.ndim(node.step) - 1
        return jax.tree.map(lambda x: task_axis if jax.numpy.ndim(x) > task_axis >= 0 else None, node)
      return 0 if jax.numpy.ndim(node) >= 1 else None

    return jax.tree.map(axes, state, is_leaf=lambda node: isinstance(node, TaskState))


def tree_finite(tree: PyTree) -> jax.Array:
  """True when every leaf of ``tree`` is finite."""
  leaves = [jax.numpy.all(jax.numpy.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jax.numpy.all(jax.numpy.stack(leaves)) if leaves else jax.numpy.array(True)


__all__ = ["EstimatorState", "GradientEstimator", "Metrics", "tree_finite"]
