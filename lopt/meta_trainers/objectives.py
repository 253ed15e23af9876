"""Meta-objectives and the masking of diverged tasks.

``unroll`` scores every inner step by the task's normalised loss (``task.normalize``, about 1 at initialisation) on
the training batch or on an outer-validation batch. An objective reduces those per-step losses of one truncation to
one number per task:

- ``"mean"``: the mean over the truncation's steps; with ``meta_loss_split="train"`` this is the mean training
  loss over the unroll, with ``"outer_valid"`` the mean outer-validation loss.
- ``"final"``: the loss at the truncation's last step (for a full-horizon unroll, the final loss).

Because losses are normalised per task, tasks of different scale average sensibly. A task whose objective is not
finite, exceeds ``max_loss``, or whose parameters became non-finite is *masked*: it contributes nothing to the
estimate and restarts at the next truncation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lopt.types import PyTree

OBJECTIVES = ("mean", "final")
SPLITS = ("train", "outer_valid")  # the splits a meta-objective may read; ``test`` is kept for evaluation


def tree_finite(tree: PyTree) -> jax.Array:
  """True when every leaf of ``tree`` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def reduce(losses: jax.Array, objective: str, *, loss_clip: float | None = None) -> jax.Array:
  """Reduces per-step losses ``(..., K)`` to ``(...)``; ``loss_clip`` caps each step's loss first.

  Clipping bounds the influence of one exploding perturbation on an ES/PES difference; the unclipped value still
  decides masking (see ``valid``).
  """
  if loss_clip is not None:
    losses = jnp.minimum(losses, loss_clip)
  return jnp.mean(losses, axis=-1) if objective == "mean" else losses[..., -1]


def valid(raw_objective: jax.Array, params: PyTree, max_loss: float, *, lead: int) -> jax.Array:
  """True for tasks with a finite objective below ``max_loss`` and finite parameters.

  Args:
    raw_objective: unclipped objective, shape ``(..., num_tasks)``.
    params: the tasks' parameters after the truncation, with the same ``lead`` leading axes.
    max_loss: bound on the normalised objective.
    lead: number of leading batch axes of ``params`` (1 for a batch of tasks, 2 for (sign, task)).
  """
  fn = tree_finite
  for _ in range(lead):
    fn = jax.vmap(fn)
  ok = jnp.isfinite(raw_objective) & (raw_objective < max_loss) & fn(params)
  return ok


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of ``values`` where ``mask``; 0 when nothing is valid."""
  return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def finite_or_zero(tree: PyTree) -> PyTree:
  """Replaces non-finite entries by 0: the last guard that keeps the meta-gradient finite."""
  return jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, jnp.zeros_like(g)), tree)
