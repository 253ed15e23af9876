"""Small decoder-only transformer language models over characters."""

from __future__ import annotations


import flax.linen as nn
import jax

from lopt import arguments
from lopt.registry import register
from lopt.tasks import text
from lopt.tasks.base import TaskFamily
from lopt.tasks.char_rnn import language_model_family


class TransformerLM(nn.Module):
  """Token and learned position embeddings, pre-norm causal attention + MLP blocks, final norm, logits."""

  vocab_size: int
  width: int
  depth: int
  num_heads: int
  max_len: int

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    length = tokens.shape[-1]
    x = nn.Embed(self.vocab_size, self.width)(tokens)
    x = x + self.param("positions", nn.initializers.normal(0.02), (self.max_len, self.width))[:length]
    mask = nn.make_causal_mask(tokens)
    for _ in range(self.depth):
      x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(nn.LayerNorm()(x), mask=mask)
      h = nn.Dense(2 * self.width)(nn.LayerNorm()(x))
      x = x + nn.Dense(self.width)(jax.nn.gelu(h))
    return nn.Dense(self.vocab_size)(nn.LayerNorm()(x))


@register("task_family", "transformer_lm")
def transformer_lm(*, width: int = 32, depth: int = 1, num_heads: int = 2, seq_len: int = 16,
                   batch_size: int = 8, corpus: str = "grammar", text_file: str | None = None) -> TaskFamily:
  """Character-level causal transformer LM trained with next-character cross-entropy.

  Args:
    width: model width (divisible by ``num_heads``).
    depth: number of transformer blocks.
    num_heads: attention heads per block.
    seq_len: characters per training sequence.
    batch_size: sequences per batch.
    corpus: ``"grammar"`` (generated) or ``"file"`` (``text_file``).
    text_file: path of a UTF-8 text file when ``corpus="file"``.

  Returns:
    A family whose ``cfg`` is ``{"init_scale": scalar}``; the normaliser is ``log(vocab_size)``.
  """
  owner = "task_families.transformer_lm"
  width = arguments.integer(f"{owner}.width", width, minimum=1)
  depth = arguments.integer(f"{owner}.depth", depth, minimum=1)
  num_heads = arguments.integer(f"{owner}.num_heads", num_heads, minimum=1)
  seq_len = arguments.integer(f"{owner}.seq_len", seq_len, minimum=1)
  batch_size = arguments.integer(f"{owner}.batch_size", batch_size, minimum=1)
  if width % num_heads:
    raise arguments.ArgumentError(f"{owner}.width", f"must be divisible by num_heads ({num_heads}), got {width}.")
  corpus_data = text.load_text(corpus, text_file)
  vocab_size = len(corpus_data.vocab)
  model = TransformerLM(vocab_size=vocab_size, width=width, depth=depth, num_heads=num_heads, max_len=seq_len)
  name = f"transformer_lm_{corpus}_w{width}_d{depth}_h{num_heads}_t{seq_len}_b{batch_size}"
  return language_model_family(name, model, corpus_data, corpus=corpus, text_file=text_file, batch_size=batch_size,
                               seq_len=seq_len)
