"""Character-level text data: a corpus generated from a small grammar, or a user's plain-text file.

The generated corpus needs no download and no shipped file: sentences are drawn from a fixed probabilistic
grammar by a seeded NumPy generator, so every machine builds the same text. It has real structure for a language
model to learn (a closed vocabulary, agreement between determiners and nouns, punctuation) but is small.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt.tasks import loaders
from lopt.types import PRNGKey

_DETERMINERS = ("the", "a", "every", "one", "no")
_ADJECTIVES = ("small", "quiet", "red", "old", "clever", "bright", "slow", "happy")
_NOUNS = ("cat", "dog", "bird", "river", "stone", "child", "tree", "ship", "lamp", "garden")
_VERBS = ("sees", "likes", "finds", "follows", "paints", "hears", "builds", "carries")
_ADVERBS = ("slowly", "often", "never", "again", "gladly")
_PREPOSITIONS = ("near", "under", "behind", "with")
TEXT_SIZES: tuple[float, float] = (0.8, 0.1)  # train, outer_valid fractions; the rest is test.


class TextData(NamedTuple):
  """Integer-encoded text splits and the vocabulary they share."""

  train: jax.Array
  outer_valid: jax.Array
  test: jax.Array
  vocab: str


def _noun_phrase(rng: np.random.Generator) -> str:
  words = [rng.choice(_DETERMINERS)]
  if rng.random() < 0.5:
    words.append(rng.choice(_ADJECTIVES))
  words.append(rng.choice(_NOUNS))
  if rng.random() < 0.2:
    words += [rng.choice(_PREPOSITIONS), rng.choice(_DETERMINERS), rng.choice(_NOUNS)]
  return " ".join(words)


def grammar_text(num_sentences: int = 3000, seed: int = 0) -> str:
  """Sentences like ``"the old dog often follows a bird near the tree."`` from a fixed grammar."""
  rng = np.random.default_rng(seed)
  sentences = []
  for _ in range(num_sentences):
    parts = [_noun_phrase(rng)]
    if rng.random() < 0.3:
      parts.append(rng.choice(_ADVERBS))
    parts += [rng.choice(_VERBS), _noun_phrase(rng)]
    sentence = " ".join(parts)
    if rng.random() < 0.15:
      sentence += ", and " + _noun_phrase(rng) + " " + rng.choice(_VERBS) + " " + _noun_phrase(rng)
    sentences.append(sentence + ".")
  return " ".join(sentences)


def encode(text: str) -> TextData:
  """Maps characters to ids (sorted vocabulary of the characters present) and splits the text 80/10/10."""
  vocab = "".join(sorted(set(text)))
  lookup = {c: i for i, c in enumerate(vocab)}
  ids = np.fromiter((lookup[c] for c in text), np.int32, len(text))
  cuts = [int(len(ids) * TEXT_SIZES[0]), int(len(ids) * (TEXT_SIZES[0] + TEXT_SIZES[1]))]
  return TextData(*(jnp.asarray(part) for part in np.split(ids, cuts)), vocab=vocab)


@functools.lru_cache(maxsize=None)
def load_text(corpus: str = "grammar", path: str | None = None) -> TextData:
  """The ``"grammar"`` corpus, or (``corpus="file"``) the UTF-8 text file at ``path``; cached.

  Raises:
    ValueError: for an unknown corpus or ``"file"`` without a path.
    FileNotFoundError, lopt.tasks.loaders.DataFileError: for a missing or malformed file, naming it.
  """
  if corpus == "grammar":
    return encode(grammar_text())
  if corpus == "file":
    if path is None:
      raise ValueError("corpus='file' needs the path of a UTF-8 text file.")
    return encode(loaders.read_text(path))
  raise ValueError(f"Unknown corpus '{corpus}'. Options: grammar, file.")


def sample_sequences(tokens: jax.Array, key: PRNGKey, batch_size: int,
                     seq_len: int) -> tuple[jax.Array, jax.Array]:
  """Random windows of ``seq_len + 1`` characters, returned as ``(inputs, targets)`` shifted by one.

  Traceable under ``jit``/``vmap``; the same key gives the same batch.
  """
  starts = jax.random.randint(key, (batch_size,), 0, tokens.shape[0] - seq_len - 1)
  windows = jax.vmap(lambda s: jax.lax.dynamic_slice(tokens, (s,), (seq_len + 1,)))(starts)
  return windows[:, :-1], windows[:, 1:]
