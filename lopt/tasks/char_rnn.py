"""Character-level recurrent language models (LSTM or GRU) on generated or user-supplied text.

The recurrent kernels start orthogonal, as usual for RNNs, but not through ``jax.nn.initializers.orthogonal``
(flax's default): that calls a LAPACK QR, and on the CPU jaxlib runs a *batched* LAPACK call (a ``vmap`` over
tasks, as when an estimator resets its tasks inside ``jit``) by fanning it out over XLA's intra-op thread pool from
a thread of that same pool and blocking until the pieces finish. When as many QRs start at once as the pool has
threads (a GRU has three recurrent kernels; a 2-core machine has two threads), every thread waits for work that
no thread is free to run: the program deadlocks at 0% CPU. ``orthogonal`` below builds the same distribution with
Gram-Schmidt in plain ``jax.numpy``, so the model contains no LAPACK call at all.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lopt import arguments
from lopt.registry import register
from lopt.tasks import text
from lopt.tasks.base import TaskFamily
from lopt.tasks.model_family import model_family

CELLS = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}


def orthogonal(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """A Haar-random matrix with orthonormal columns (or rows, when wider than tall), without LAPACK.

  Gram-Schmidt of a Gaussian matrix gives the Q factor of its QR decomposition with a positive diagonal R, which is
  Haar-distributed like ``jax.nn.initializers.orthogonal``'s result. Each column is orthogonalised twice against
  the earlier ones ("twice is enough"), which keeps float32 columns orthonormal to ~1e-6.

  Args:
    key: randomness.
    shape: ``(rows, cols)``.
    dtype: of the result.
  """
  if len(shape) != 2:
    raise ValueError(f"orthogonal needs a 2-D shape, got {shape}.")
  rows, cols = shape
  tall, narrow = max(rows, cols), min(rows, cols)
  gaussian = jax.random.normal(key, (tall, narrow), jnp.float32)

  def add_column(j, q):
    # Columns >= j of q are still zero, so projecting on all of q projects on the finished ones only.
    v = gaussian[:, j]
    v = v - q @ (q.T @ v)
    v = v - q @ (q.T @ v)
    return q.at[:, j].set(v / jnp.linalg.norm(v))

  q = jax.lax.fori_loop(0, narrow, add_column, jnp.zeros((tall, narrow), jnp.float32))
  return (q if rows >= cols else q.T).astype(dtype)


class CharRNN(nn.Module):
  """Embedding, one recurrent layer over time, dense projection to next-character logits."""

  vocab_size: int
  embed_size: int
  hidden_size: int
  cell: str

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = nn.Embed(self.vocab_size, self.embed_size)(tokens)
    x = nn.RNN(CELLS[self.cell](self.hidden_size, recurrent_kernel_init=orthogonal))(x)
    return nn.Dense(self.vocab_size)(x)


def lm_loss(apply, params, key, examples) -> jax.Array:
  """Mean next-character cross-entropy (nats per character)."""
  del key  # Deterministic model.
  inputs, targets = examples
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(apply(params, inputs), targets))


def lm_accuracy(apply, params, examples) -> jax.Array:
  inputs, targets = examples
  return jnp.mean(jnp.argmax(apply(params, inputs), axis=-1) == targets)


def language_model_family(name: str, model: nn.Module, corpus_data: text.TextData, *, corpus: str,
                          text_file: str | None, batch_size: int, seq_len: int) -> TaskFamily:
  """A next-character task family for ``model`` on random windows of ``corpus_data`` (shared by the LMs)."""

  def batch(key, split):
    return text.sample_sequences(getattr(corpus_data, split), key, batch_size, seq_len)

  if corpus == "file":
    name += f"_{text_file}"
  return model_family(name=name, model=model, example_input=jnp.zeros((1, seq_len), jnp.int32), batch=batch,
                      loss=lm_loss, normalizer=math.log(len(corpus_data.vocab)), accuracy=lm_accuracy)


@register("task_family", "char_rnn")
def char_rnn(*, cell: str = "gru", hidden_size: int = 32, embed_size: int = 16, seq_len: int = 16,
             batch_size: int = 8, corpus: str = "grammar", text_file: str | None = None) -> TaskFamily:
  """Character-level recurrent LM trained with next-character cross-entropy.

  Args:
    cell: ``"gru"`` or ``"lstm"``.
    hidden_size: recurrent state size.
    embed_size: character embedding size.
    seq_len: characters per training sequence.
    batch_size: sequences per batch.
    corpus: ``"grammar"`` (generated, see ``lopt.tasks.text``) or ``"file"`` (``text_file``).
    text_file: path of a UTF-8 text file when ``corpus="file"``.

  Returns:
    A family whose ``cfg`` is ``{"init_scale": scalar}``; the normaliser is ``log(vocab_size)``, the loss of a
    uniform prediction.
  """
  owner = "task_families.char_rnn"
  cell = arguments.choice(f"{owner}.cell", cell, sorted(CELLS))
  hidden_size = arguments.integer(f"{owner}.hidden_size", hidden_size, minimum=1)
  embed_size = arguments.integer(f"{owner}.embed_size", embed_size, minimum=1)
  seq_len = arguments.integer(f"{owner}.seq_len", seq_len, minimum=1)
  batch_size = arguments.integer(f"{owner}.batch_size", batch_size, minimum=1)
  corpus_data = text.load_text(corpus, text_file)
  vocab_size = len(corpus_data.vocab)
  model = CharRNN(vocab_size=vocab_size, embed_size=embed_size, hidden_size=hidden_size, cell=cell)
  name = f"char_rnn_{corpus}_{cell}{hidden_size}_e{embed_size}_t{seq_len}_b{batch_size}"
  return language_model_family(name, model, corpus_data, corpus=corpus, text_file=text_file, batch_size=batch_size,
                               seq_len=seq_len)
