"""Task samplers: which task family a worker trains next."""

from __future__ import annotations

from lopt.registry import register
from lopt.tasks.base import TaskFamily, TaskSampler
from lopt.types import PRNGKey


@register("task_sampler", "fixed")
def fixed(task_family: TaskFamily) -> TaskSampler:
  """Always returns the one given task family.

  Args:
    task_family: the family to train on.

  Returns:
    A sampler whose ``families`` is ``(task_family,)``.
  """

  def sample(key: PRNGKey) -> TaskFamily:
    del key  # Nothing to choose.
    return task_family

  return TaskSampler(name=f"fixed({task_family.name})", families=(task_family,), sample=sample)
