"""Readers for standard public data set files in a directory the user names; nothing here touches the network.

Supported: MNIST and Fashion-MNIST (idx files, raw or gzipped), CIFAR-10 (the python pickle batches) and plain
UTF-8 text. A missing file raises ``FileNotFoundError`` and a malformed one ``DataFileError``; both name the file.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from lopt.tasks.splits import Split, Splits

# idx type codes (third byte of the magic number) -> numpy dtype; multi-byte values are big-endian.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES: dict[str, str] = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
CIFAR10_TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
OUTER_VALID_FRACTION = 1 / 6  # MNIST's 60,000 training images -> 50,000 train and 10,000 outer_valid.


class DataFileError(ValueError):
  """A data file exists but cannot be parsed; the message starts with the file's path."""


def _find(directory: str, candidates: Sequence[str]) -> str:
  """Returns the first existing path among ``candidates`` in ``directory``; names them all when none exists."""
  for name in candidates:
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  tried = ", ".join(os.path.join(directory, name) for name in candidates)
  raise FileNotFoundError(f"Missing data file {os.path.join(directory, candidates[0])} (looked for: {tried}).")


def read_idx(path: str) -> np.ndarray:
  """Reads an idx file (the MNIST format), gzipped when its name ends in ``.gz``.

  Raises:
    FileNotFoundError: when ``path`` does not exist.
    DataFileError: for a bad magic number, a truncated body or trailing bytes, or an unreadable gzip stream.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Missing data file {path}.")
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        raw = f.read()
    else:
      with open(path, "rb") as f:
        raw = f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as error:
    raise DataFileError(f"{path}: cannot read ({error}).") from error
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise DataFileError(f"{path}: not an idx file (bad magic number {raw[:4].hex() or 'empty'}).")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataFileError(f"{path}: truncated header ({len(raw)} bytes, need {header}).")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  expected = header + int(np.prod(shape)) * dtype.itemsize
  if len(raw) != expected:
    raise DataFileError(f"{path}: {len(raw)} bytes but the header {shape} needs {expected} (truncated or corrupt).")
  return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _idx_pair(directory: str, images: str, labels: str) -> tuple[np.ndarray, np.ndarray, str]:
  x_path = _find(directory, (images, images + ".gz"))
  y_path = _find(directory, (labels, labels + ".gz"))
  x, y = read_idx(x_path), read_idx(y_path)
  if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
    raise DataFileError(f"{x_path}: images of shape {x.shape} do not match labels of shape {y.shape} in {y_path}.")
  return x, y, x_path


def _split_train(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[Split, Split]:
  """Holds a fixed random ``OUTER_VALID_FRACTION`` of the training files out as ``outer_valid``."""
  order = np.random.default_rng(seed).permutation(len(y))
  cut = len(y) - int(round(len(y) * OUTER_VALID_FRACTION))
  return (Split(jnp.asarray(x[order[:cut]]), jnp.asarray(y[order[:cut]])),
          Split(jnp.asarray(x[order[cut:]]), jnp.asarray(y[order[cut:]])))


def mnist(directory: str, *, seed: int = 0) -> Splits:
  """MNIST or Fashion-MNIST from the four standard idx files (raw or ``.gz``) in ``directory``.

  Returns:
    Images flattened to ``[n, 784]`` floats in [0, 1] and int32 labels; ``test`` is the t10k files.
  """
  train_x, train_y, _ = _idx_pair(directory, MNIST_FILES["train_x"], MNIST_FILES["train_y"])
  test_x, test_y, _ = _idx_pair(directory, MNIST_FILES["test_x"], MNIST_FILES["test_y"])
  prep = lambda x: (x.reshape(len(x), -1) / 255.0).astype(np.float32)
  train, outer_valid = _split_train(prep(train_x), train_y.astype(np.int32), seed)
  return Splits(train, outer_valid, Split(jnp.asarray(prep(test_x)), jnp.asarray(test_y.astype(np.int32))))


def read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one CIFAR-10 python pickle batch into HWC images ``[n, 32, 32, 3]`` (uint8) and labels.

  Raises:
    FileNotFoundError: when ``path`` does not exist.
    DataFileError: for a truncated or corrupt pickle or unexpected contents.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Missing data file {path}.")
  try:
    with open(path, "rb") as f:
      # CIFAR-10's own format is a pickle; load only files the user put there themselves.
      batch = pickle.load(f, encoding="bytes")
  except Exception as error:  # pylint: disable=broad-except
    raise DataFileError(f"{path}: not a readable CIFAR-10 pickle batch ({type(error).__name__}: {error}).") from error
  if not isinstance(batch, dict):
    raise DataFileError(f"{path}: expected a dict, found {type(batch).__name__}.")
  batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
  if "data" not in batch or "labels" not in batch:
    raise DataFileError(f"{path}: missing 'data' or 'labels' (keys: {sorted(batch)}).")
  x, y = np.asarray(batch["data"]), np.asarray(batch["labels"])
  if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
    raise DataFileError(f"{path}: data of shape {x.shape} and {len(y)} labels; expected [n, 3072] and n labels.")
  # Rows are stored channel-major (1024 red, 1024 green, 1024 blue values).
  return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y.astype(np.int32)


def cifar10(directory: str, *, seed: int = 0) -> Splits:
  """CIFAR-10 from ``data_batch_1..5`` and ``test_batch`` in ``directory`` or its ``cifar-10-batches-py``.

  Returns:
    Images flattened (HWC order) to ``[n, 3072]`` floats in [0, 1] and int32 labels.
  """
  nested = os.path.join(directory, "cifar-10-batches-py")
  if os.path.isdir(nested):
    directory = nested
  parts = [read_cifar_batch(_find(directory, (name,))) for name in CIFAR10_TRAIN_BATCHES]
  prep = lambda x: (x.reshape(len(x), -1) / 255.0).astype(np.float32)
  train, outer_valid = _split_train(prep(np.concatenate([p[0] for p in parts])),
                                    np.concatenate([p[1] for p in parts]), seed)
  test_x, test_y = read_cifar_batch(_find(directory, (CIFAR10_TEST_BATCH,)))
  return Splits(train, outer_valid, Split(jnp.asarray(prep(test_x)), jnp.asarray(test_y)))


def read_text(path: str, *, min_chars: int = 64) -> str:
  """Reads a UTF-8 text file.

  Raises:
    FileNotFoundError: when ``path`` does not exist.
    DataFileError: when it is not valid UTF-8 or shorter than ``min_chars`` characters.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Missing data file {path}.")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as error:
    raise DataFileError(f"{path}: not valid UTF-8 text ({error}).") from error
  if len(text) < min_chars:
    raise DataFileError(f"{path}: only {len(text)} characters; need at least {min_chars}.")
  return text


@functools.lru_cache(maxsize=None)  # Families built repeatedly share one copy.
def load_directory(name: str, directory: str) -> Splits:
  """Loads file data set ``name`` (one of ``lopt.tasks.data.FILE_DATA_SETS``) from ``directory``."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"Data directory {directory} for data set '{name}' does not exist.")
  if name in ("mnist", "fashion_mnist"):
    return mnist(directory)
  if name == "cifar10":
    return cifar10(directory)
  raise ValueError(f"No file loader for data set '{name}'.")
