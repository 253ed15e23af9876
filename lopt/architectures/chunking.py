"""Per-parameter work in cache-sized chunks, for per-parameter MLPs too wide to write elementwise.

A per-parameter MLP evaluated as matrix multiplies over a whole 1M-parameter tensor materialises (1M, hidden)
activations per layer: hundreds of MB of memory traffic, and on CPU fresh pages to fault in, every step. Mapping
the same function over chunks of a few thousand parameters (``lax.map``) keeps every intermediate in cache. The
inputs are sliced chunk by chunk as separate arrays (never stacked into one), so chunking itself copies nothing
when the chunk size divides the tensor's size.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

DEFAULT_CHUNK_SIZE = 2048


def map_in_chunks(fn: Callable[[list[jax.Array]], Sequence[jax.Array]], inputs: Sequence[jax.Array], *,
                  chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[jax.Array]:
  """Applies a per-parameter function to same-shaped arrays chunk by chunk.

  Args:
    fn: maps a list of 1-d arrays (one per input, all of one length) to a list of 1-d arrays of that length; it
      must treat positions independently.
    inputs: arrays of one tensor's shape.
    chunk_size: parameters per chunk. A tensor no larger is processed in one piece; others are zero-padded to a
      multiple of it.

  Returns:
    ``fn``'s outputs, each reshaped to the inputs' shape.
  """
  shape = inputs[0].shape
  size = inputs[0].size
  flat = [x.reshape(-1) for x in inputs]
  if size <= chunk_size:
    return [y.reshape(shape) for y in fn(flat)]
  num_chunks = -(-size // chunk_size)
  pad = num_chunks * chunk_size - size
  if pad:
    flat = [jnp.pad(x, (0, pad)) for x in flat]
  out = jax.lax.map(lambda xs: tuple(fn(list(xs))), tuple(x.reshape(num_chunks, chunk_size) for x in flat))
  return [y.reshape(-1)[:size].reshape(shape) for y in out]
