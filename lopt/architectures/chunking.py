"""Per-parameter work in cache-sized chunks.

A per-parameter MLP over a 1M-parameter tensor materialises (1M, hidden) activations per layer: hundreds of MB of
memory traffic per step on CPU. Mapping the same function over chunks of a few thousand parameters (``lax.map``)
keeps every intermediate in cache; measured 3-5x faster for a 32x32 MLP on a 2-core CPU. Small tensors (biases) are
processed in one piece.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

DEFAULT_CHUNK_SIZE = 16384


def map_in_chunks(fn: Callable[[jax.Array], jax.Array], inputs: Sequence[jax.Array], num_outputs: int, *,
                  chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[jax.Array]:
  """Applies a per-parameter function to same-shaped arrays chunk by chunk.

  Args:
    fn: maps ``(len(inputs), n)`` stacked inputs to ``(num_outputs, n)``; must treat columns independently.
      Feature-major layout: each feature of a chunk is a contiguous row, so slicing one out is free.
    inputs: arrays of one tensor's shape.
    num_outputs: columns ``fn`` returns.
    chunk_size: parameters per chunk.

  Returns:
    ``num_outputs`` float32 arrays of the inputs' shape.
  """
  shape = inputs[0].shape
  size = inputs[0].size
  flat = [x.reshape(-1).astype(jnp.float32) for x in inputs]
  if size <= chunk_size:
    out = fn(jnp.stack(flat))
    return [out[i].reshape(shape) for i in range(num_outputs)]
  num_chunks = -(-size // chunk_size)
  pad = num_chunks * chunk_size - size
  if pad:
    flat = [jnp.pad(x, (0, pad)) for x in flat]
  stacked = jnp.stack([x.reshape(num_chunks, chunk_size) for x in flat], axis=1)
  out = jax.lax.map(fn, stacked)  # (num_chunks, num_outputs, chunk_size)
  return [out[:, i].reshape(-1)[:size].reshape(shape) for i in range(num_outputs)]
