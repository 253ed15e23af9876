"""Task augmentations: wrappers that turn a task family into a harder or differently scaled one (VeLO-style).

Each wrapper takes a family and returns a new family with its own ``name`` (so it compiles separately) and the
same kind of configuration, extended where the augmentation is itself random.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from lopt import arguments
from lopt.registry import register
from lopt.tasks.base import Task, TaskFamily, check_family
from lopt.types import PRNGKey, PyTree


@register("task_family", "reparametrize")
def reparametrize(task_family: TaskFamily, *, min_scale: float = 0.1, max_scale: float = 10.0) -> TaskFamily:
  """Stores each parameter tensor divided by a random per-tensor scale ``s`` and trains that instead.

  The loss of stored parameters ``q`` is the base loss of ``q * s``, so the function computed is unchanged while
  gradients are multiplied by ``s`` and the optimum moves to ``theta* / s``: an optimizer must cope with badly
  scaled parameterisations.

  Args:
    task_family: the family to wrap.
    min_scale: smallest scale (log-uniform in ``[min_scale, max_scale]``).
    max_scale: largest scale.

  Returns:
    A family whose ``cfg`` is ``{"base": base_cfg, "log_scales": [num_tensors]}``.
  """
  owner = "task_families.reparametrize"
  task_family = check_family(f"{owner}.task_family", task_family)
  min_scale = arguments.real(f"{owner}.min_scale", min_scale, minimum=0.0, open_minimum=True)
  max_scale = arguments.real(f"{owner}.max_scale", max_scale, minimum=min_scale)
  example_cfg = jax.eval_shape(task_family.sample, jax.random.key(0))
  example = jax.eval_shape(lambda c, k: task_family.task(c).init(k), example_cfg, jax.random.key(0))
  treedef = jax.tree.structure(example)
  num_tensors = treedef.num_leaves

  def sample(key: PRNGKey) -> PyTree:
    base_key, scale_key = jax.random.split(key)
    log_scales = jax.random.uniform(scale_key, (num_tensors,), minval=math.log(min_scale),
                                    maxval=math.log(max_scale))
    return {"base": task_family.sample(base_key), "log_scales": log_scales}

  def task(cfg: PyTree) -> Task:
    base = task_family.task(cfg["base"])
    scales = jax.tree.unflatten(treedef, list(jnp.exp(cfg["log_scales"])))

    def init(key: PRNGKey) -> PyTree:
      return jax.tree.map(lambda p, s: p / s.astype(p.dtype), base.init(key), scales)

    def loss(params: PyTree, key: PRNGKey, batch: PyTree) -> jax.Array:
      return base.loss(jax.tree.map(lambda q, s: q * s.astype(q.dtype), params, scales), key, batch)

    accuracy = None
    if base.accuracy is not None:
      accuracy = lambda params, batch: base.accuracy(jax.tree.map(lambda q, s: q * s, params, scales), batch)
    return Task(init=init, loss=loss, batch=base.batch, normalize=base.normalize, accuracy=accuracy)

  return TaskFamily(name=f"reparametrize({task_family.name},{min_scale:g}-{max_scale:g})", sample=sample,
                    task=task)


@register("task_family", "reduced_batch")
def reduced_batch(task_family: TaskFamily, *, batch_size: int = 4) -> TaskFamily:
  """Keeps only the first ``batch_size`` examples of every batch: noisier gradients, same task.

  Every leaf of the base family's batches must have a leading batch axis of at least ``batch_size`` (true of the
  data-driven families; not of ``quadratic`` or ``classic_2d``, whose "batch" is a noise vector).

  Returns:
    A family with the base family's ``cfg``.
  """
  task_family = check_family("task_families.reduced_batch.task_family", task_family)
  batch_size = arguments.integer("task_families.reduced_batch.batch_size", batch_size, minimum=1)

  def task(cfg: PyTree) -> Task:
    base = task_family.task(cfg)

    def batch(key: PRNGKey, split: str) -> PyTree:
      full = base.batch(key, split)
      for leaf in jax.tree.leaves(full):
        if leaf.ndim == 0 or leaf.shape[0] < batch_size:
          raise ValueError(f"reduced_batch({batch_size}) needs batches with a leading axis of at least "
                           f"{batch_size}; family {task_family.name} gives shape {leaf.shape}.")
      return jax.tree.map(lambda leaf: leaf[:batch_size], full)

    return Task(init=base.init, loss=base.loss, batch=batch, normalize=base.normalize, accuracy=base.accuracy)

  return TaskFamily(name=f"reduced_batch({task_family.name},{batch_size})", sample=task_family.sample, task=task)


def _to_bfloat16(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


@register("task_family", "bfloat16")
def bfloat16(task_family: TaskFamily) -> TaskFamily:
  """Computes the loss in bfloat16: parameters and floating-point batches are cast before the forward pass.

  Parameters stay float32 (a master copy), so gradients arrive in float32 but carry bfloat16 rounding noise, as in
  VeLO's low-precision augmentation. The returned loss is cast back to float32.

  Returns:
    A family with the base family's ``cfg``.
  """
  task_family = check_family("task_families.bfloat16.task_family", task_family)

  def task(cfg: PyTree) -> Task:
    base = task_family.task(cfg)

    def loss(params: PyTree, key: PRNGKey, batch: PyTree) -> jax.Array:
      return base.loss(_to_bfloat16(params), key, _to_bfloat16(batch)).astype(jnp.float32)

    accuracy = None
    if base.accuracy is not None:
      accuracy = lambda params, batch: base.accuracy(_to_bfloat16(params), _to_bfloat16(batch))
    return Task(init=base.init, loss=loss, batch=base.batch, normalize=base.normalize, accuracy=accuracy)

  return TaskFamily(name=f"bfloat16({task_family.name})", sample=task_family.sample, task=task)
