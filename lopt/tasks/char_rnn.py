"""Character-level recurrent language models (LSTM or GRU) on generated or user-supplied text."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lopt.registry import register
from lopt.tasks import text
from lopt.tasks.base import TaskFamily
from lopt.tasks.model_family import model_family

CELLS = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}


class CharRNN(nn.Module):
  """Embedding, one recurrent layer over time, dense projection to next-character logits."""

  vocab_size: int
  embed_size: int
  hidden_size: int
  cell: str

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = nn.Embed(self.vocab_size, self.embed_size)(tokens)
    x = nn.RNN(CELLS[self.cell](self.hidden_size))(x)
    return nn.Dense(self.vocab_size)(x)


def lm_loss(apply, params, key, examples) -> jax.Array:
  """Mean next-character cross-entropy (nats per character)."""
  del key  # Deterministic model.
  inputs, targets = examples
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(apply(params, inputs), targets))


def lm_accuracy(apply, params, examples) -> jax.Array:
  inputs, targets = examples
  return jnp.mean(jnp.argmax(apply(params, inputs), axis=-1) == targets)


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
  if cell not in CELLS:
    raise ValueError(f"Unknown cell '{cell}'. Options: {', '.join(sorted(CELLS))}.")
  if min(hidden_size, embed_size, seq_len, batch_size) < 1:
    raise ValueError("hidden_size, embed_size, seq_len and batch_size must be positive.")
  corpus_data = text.load_text(corpus, text_file)
  vocab_size = len(corpus_data.vocab)
  model = CharRNN(vocab_size=vocab_size, embed_size=embed_size, hidden_size=hidden_size, cell=cell)

  def batch(key, split):
    return text.sample_sequences(getattr(corpus_data, split), key, batch_size, seq_len)

  name = f"char_rnn_{corpus}_{cell}{hidden_size}_e{embed_size}_t{seq_len}_b{batch_size}"
  if corpus == "file":
    name += f"_{text_file}"
  return model_family(name=name, model=model, example_input=jnp.zeros((1, seq_len), jnp.int32), batch=batch,
                      loss=lm_loss, normalizer=math.log(vocab_size), accuracy=lm_accuracy)
