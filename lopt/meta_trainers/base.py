"""The ``GradientEstimator`` interface.

An estimator holds only its hyperparameters. The learned optimizer and the task family are passed to each call as
keyword arguments, so one estimator object serves every family a sampler yields (``meta_train`` compiles and caches
one jitted ``estimate`` per family).
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
    """Number of inner tasks trained in parallel (the leading axis of the state)."""

  @abc.abstractmethod
  def init(self, theta: MetaParams, key: PRNGKey, *, task_family: TaskFamily,
           learned_optimizer: LearnedOptimizer) -> EstimatorState:
    """Creates the persistent state: inner states of a batch of tasks, horizons, accumulators."""

  @abc.abstractmethod
  def estimate(self, theta: MetaParams, state: EstimatorState, key: PRNGKey, *, task_family: TaskFamily,
               learned_optimizer: LearnedOptimizer) -> tuple[MetaParams, EstimatorState, dict[str, Any]]:
    """Returns ``(meta_grad, new_state, metrics)``; metrics are scalars (jax arrays)."""


def tree_finite(tree: PyTree) -> jax.Array:
  """True when every leaf of ``tree`` is finite."""
  leaves = [jax.numpy.all(jax.numpy.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jax.numpy.all(jax.numpy.stack(leaves)) if leaves else jax.numpy.array(True)


__all__ = ["EstimatorState", "GradientEstimator", "Metrics", "tree_finite"]
