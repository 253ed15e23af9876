"""Statistics over the *active* entries of padded tensors: the one helper every architecture uses for masks.

A structure-polymorphic task (``lopt.tasks.polymorphic``) pads its parameters to a family-wide maximum shape and
marks the entries of the structure it draws with a mask: a pytree of 0/1 float arrays shaped like the parameters.
The mask reaches an optimizer as one value beside the parameters, the keyword ``update(..., mask=mask)`` (the inner
loop passes ``task.mask``); ``mask=None`` means every entry is active and compiles to exactly the unmasked code.

With a mask, every per-tensor statistic (means for normalisation, RMS, tensor features, shapes) is taken over the
active entries only, and the update of an inactive entry is exactly zero. Then ``N`` steps on a padded structure
equal ``N`` steps on the same structure unpadded (to float tolerance), whatever the inactive entries hold.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

from lopt.types import Params

Mask = Any  # a pytree of 0/1 arrays shaped like the parameters, or None (all active)


def leaves(mask: Mask, treedef: Any) -> list[jax.Array | None]:
  """The mask's leaves in ``treedef``'s order, or one ``None`` per leaf when there is no mask.

  Raises:
    ValueError: when the mask's structure is not the parameters'.
  """
  if mask is None:
    return [None] * treedef.num_leaves
  if jax.tree.structure(mask) != treedef:
    raise ValueError(f"The mask must be a tree shaped like the parameters ({treedef}), got "
                     f"{jax.tree.structure(mask)}.")
  return treedef.flatten_up_to(mask)


def _broadcast(mask: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(mask, dtype), tuple(shape))


def mean(x: jax.Array, mask: jax.Array | None, axis: int | Sequence[int] | None = None,
         keepdims: bool = False) -> jax.Array:
  """``jnp.mean`` over the entries where ``mask`` (broadcast to ``x``) is 1; 0 where there are none."""
  if mask is None:
    return jnp.mean(x, axis=axis, keepdims=keepdims)
  axis = tuple(axis) if isinstance(axis, (list, tuple)) else axis
  weights = _broadcast(mask, x.shape, x.dtype)
  count = jnp.sum(weights, axis=axis, keepdims=keepdims)
  return jnp.sum(jnp.where(weights > 0, x, 0), axis=axis, keepdims=keepdims) / jnp.maximum(count, 1)


def maximum(x: jax.Array, mask: jax.Array | None, empty: float = 0.0) -> jax.Array:
  """Max over all active entries (``empty`` where none is active)."""
  if mask is None:
    return jnp.max(x)
  return jnp.max(jnp.where(_broadcast(mask, x.shape) > 0, x, empty))


def zero_inactive(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  """``x`` with inactive entries set to exactly 0 (a select, so a non-finite inactive value cannot leak)."""
  if mask is None:
    return x
  return jnp.where(_broadcast(mask, x.shape) > 0, x, jnp.zeros([], x.dtype))


def rows(mask: jax.Array | None) -> jax.Array | None:
  """Mask of a matrix's row statistics (shape ``mask.shape[:-1]``): rows with an active entry."""
  return None if mask is None else jnp.max(mask, axis=-1)


def cols(mask: jax.Array | None) -> jax.Array | None:
  """Mask of a matrix's column statistics (shape ``mask.shape[:-2] + mask.shape[-1:]``)."""
  return None if mask is None else jnp.max(mask, axis=-2)


def active_shape(shape: Sequence[int], mask: jax.Array | None) -> tuple[Any, ...]:
  """The shape of the active block: per axis, how many indices have an active entry (traced with a mask)."""
  if mask is None:
    return tuple(shape)
  full = _broadcast(mask, shape)
  out = []
  for a in range(len(shape)):
    others = tuple(b for b in range(len(shape)) if b != a)
    out.append(jnp.sum(jnp.max(full, axis=others) if others else full).astype(jnp.float32))
  return tuple(out)


def active_size(shape: Sequence[int], mask: jax.Array | None) -> Any:
  """Number of active entries (a Python int without a mask)."""
  if mask is None:
    size = 1
    for s in shape:
      size *= int(s)
    return size
  return jnp.sum(_broadcast(mask, shape))


def any_active(mask: jax.Array | None) -> Any:
  """Whether a tensor has an active entry (True without a mask)."""
  return True if mask is None else jnp.max(mask) > 0


def masked_updates(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``tx`` accepting the ``mask=`` keyword (and ``loss=`` and the like), with inactive updates set to 0.

  For elementwise rules (Adam, SGD, weight decay) zeroing the update is all masking needs: an inactive entry's
  gradient is 0, so its moments stay 0, but weight decay or an epsilon-free rule could still move it.
  """
  tx = optax.with_extra_args_support(tx)

  def update(updates: Params, state: Any, params: Params | None = None, *, mask: Mask = None, **extra: Any):
    # The mask is forwarded too: a mask-aware inner rule (celo2's) needs it for its statistics.
    new, state = tx.update(updates, state, params, mask=mask, **extra)
    if mask is None:
      return new, state
    return jax.tree.map(zero_inactive, new, mask), state

  return optax.GradientTransformationExtraArgs(tx.init, update)
