"""Loaders for local data files (idx, CIFAR-10 pickle, text), the generated text corpus and the samplers.

Every file is written by the test itself; nothing touches the network.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import jax
import numpy as np
import pytest

from lopt import registry
from lopt import tasks
from lopt.tasks import data, loaders, samplers, text


def write_idx(path, array: np.ndarray, *, compress: bool = False, cut: int = 0) -> str:
  codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
  raw = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  raw += array.tobytes()
  raw = raw[:len(raw) - cut]
  opener = gzip.open if compress else open
  with opener(str(path), "wb") as f:
    f.write(raw)
  return str(path)


def write_mnist(directory, n_train=12, n_test=6, *, compress=False):
  rng = np.random.default_rng(0)
  suffix = ".gz" if compress else ""
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28), np.uint8),
              compress=compress)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", (np.arange(n) % 10).astype(np.uint8),
              compress=compress)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
  array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  path = write_idx(tmp_path / ("a.gz" if compress else "a"), array, compress=compress)
  np.testing.assert_array_equal(loaders.read_idx(path), array)
  wide = np.arange(5, dtype=">i4")
  np.testing.assert_array_equal(loaders.read_idx(write_idx(tmp_path / "b", wide)), wide)


def test_read_idx_rejects_truncated_corrupt_and_missing_files(tmp_path):
  array = np.zeros((3, 4, 4), np.uint8)
  truncated = write_idx(tmp_path / "truncated", array, cut=5)
  with pytest.raises(loaders.DataFileError, match="truncated"):
    loaders.read_idx(truncated)
  bad_magic = tmp_path / "bad_magic"
  bad_magic.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
  with pytest.raises(loaders.DataFileError, match=str(bad_magic)):
    loaders.read_idx(str(bad_magic))
  short_header = tmp_path / "short_header"
  short_header.write_bytes(b"\x00\x00\x08\x03\x00\x00")
  with pytest.raises(loaders.DataFileError, match=str(short_header)):
    loaders.read_idx(str(short_header))
  bad_gzip = tmp_path / "bad.gz"
  bad_gzip.write_bytes(b"this is not gzip data")
  with pytest.raises(loaders.DataFileError, match=str(bad_gzip)):
    loaders.read_idx(str(bad_gzip))
  with pytest.raises(FileNotFoundError, match="nothing_here"):
    loaders.read_idx(str(tmp_path / "nothing_here"))


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_directory_loads_into_splits(tmp_path, compress):
  write_mnist(tmp_path, compress=compress)
  splits = loaders.mnist(str(tmp_path))
  assert [s.x.shape for s in splits] == [(10, 784), (2, 784), (6, 784)]
  assert float(splits.train.x.max()) <= 1.0 and splits.test.y.dtype == np.int32
  np.testing.assert_array_equal(splits.test.y, np.arange(6) % 10)


def test_mnist_missing_and_truncated_files_are_named(tmp_path):
  write_mnist(tmp_path)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte")
  with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
    loaders.mnist(str(tmp_path))
  write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(6, np.uint8), cut=2)
  with pytest.raises(loaders.DataFileError, match="t10k-labels-idx1-ubyte"):
    loaders.mnist(str(tmp_path))
  write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8))  # One label short of the images.
  with pytest.raises(loaders.DataFileError, match="t10k-images-idx3-ubyte"):
    loaders.mnist(str(tmp_path))
  with pytest.raises(ValueError, match="data_dir"):
    data.load("mnist")
  with pytest.raises(FileNotFoundError, match="no_such_dir"):
    data.load("fashion_mnist", str(tmp_path / "no_such_dir"))


def write_cifar(directory, n=4):
  rng = np.random.default_rng(0)
  os.makedirs(directory, exist_ok=True)
  for name in (*loaders.CIFAR10_TRAIN_BATCHES, loaders.CIFAR10_TEST_BATCH):
    batch = {b"data": rng.integers(0, 256, (n, 3072), np.uint8), b"labels": list(range(n))}
    with open(os.path.join(directory, name), "wb") as f:
      pickle.dump(batch, f)


def test_cifar10_loads_pickle_batches_in_hwc_order(tmp_path):
  nested = tmp_path / "cifar-10-batches-py"
  write_cifar(nested)
  x, _ = loaders.read_cifar_batch(str(nested / "test_batch"))
  with open(nested / "test_batch", "rb") as f:
    raw = pickle.load(f, encoding="bytes")[b"data"]
  assert x.shape == (4, 32, 32, 3) and x[0, 0, 1, 2] == raw[0, 2 * 1024 + 1]  # blue plane, row 0, column 1
  splits = loaders.cifar10(str(tmp_path))
  assert [s.x.shape for s in splits] == [(17, 3072), (3, 3072), (4, 3072)]
  family = tasks.image_conv(channels=(4,), dataset="cifar10", data_dir=str(tmp_path), batch_size=2)
  assert family.task(family.sample(jax.random.key(0))).batch(jax.random.key(0), "train")[0].shape == (2, 32, 32, 3)


def test_cifar10_truncated_corrupt_and_missing_batches_are_named(tmp_path):
  write_cifar(tmp_path)
  path = tmp_path / "data_batch_3"
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(loaders.DataFileError, match="data_batch_3"):
    loaders.cifar10(str(tmp_path))
  with open(path, "wb") as f:
    pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, f)
  with pytest.raises(loaders.DataFileError, match="data_batch_3.*3072"):
    loaders.cifar10(str(tmp_path))
  os.remove(path)
  with pytest.raises(FileNotFoundError, match="data_batch_3"):
    loaders.cifar10(str(tmp_path))


def test_text_file_loader_and_errors(tmp_path):
  good = tmp_path / "book.txt"
  good.write_text("It was a bright cold day in April, and the clocks were striking thirteen. " * 4)
  corpus = text.load_text("file", str(good))
  assert set(corpus.vocab) == set(good.read_text())
  family = tasks.char_rnn(corpus="file", text_file=str(good), hidden_size=4, embed_size=4, seq_len=4,
                          batch_size=2)
  assert str(good) in family.name
  short = tmp_path / "short.txt"
  short.write_text("too short")
  with pytest.raises(loaders.DataFileError, match="short.txt"):
    loaders.read_text(str(short))
  binary = tmp_path / "binary.txt"
  binary.write_bytes(b"\xff\xfe\x00" * 50)
  with pytest.raises(loaders.DataFileError, match="binary.txt"):
    loaders.read_text(str(binary))
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    text.load_text("file", str(tmp_path / "missing.txt"))


def test_generated_corpus_is_deterministic_and_sequences_shift_by_one():
  assert text.grammar_text(50, seed=1) == text.grammar_text(50, seed=1)
  assert text.grammar_text(50, seed=1) != text.grammar_text(50, seed=2)
  corpus = text.load_text()
  assert corpus is text.load_text() and len(corpus.vocab) < 40
  inputs, targets = text.sample_sequences(corpus.train, jax.random.key(0), 3, 10)
  assert inputs.shape == targets.shape == (3, 10)
  np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])


def test_bundled_tabular_data_sets():
  for name, (features, classes) in {"wine": (13, 3), "breast_cancer": (30, 2)}.items():
    splits = data.load(name)
    assert splits.train.x.shape[1] == features and data.num_classes(splits) == classes
    assert abs(float(splits.train.x.mean())) < 1e-3  # Standardised with train statistics.


def test_mixture_sampler_weights_and_errors():
  a, b = tasks.quadratic(2), tasks.quadratic(3)
  sampler = registry.lookup("task_sampler", "mixture")([a, b], weights=[1.0, 3.0])
  assert sampler.families == (a, b)
  picks = [sampler.sample(jax.random.key(i)).name for i in range(200)]
  assert 0.6 < picks.count(b.name) / 200 < 0.9
  assert picks == [sampler.sample(jax.random.key(i)).name for i in range(200)]
  # Raw uint32 keys pick like the typed keys with the same bits.
  assert picks[:20] == [sampler.sample(jax.random.key_data(jax.random.key(i))).name for i in range(20)]
  with pytest.raises(ValueError, match="distinct"):
    tasks.mixture([a, tasks.quadratic(2)])
  with pytest.raises(ValueError, match="one weight per family"):
    tasks.mixture([a, b], weights=[1.0])


def test_mixture_sampler_frequencies_follow_weights():
  families = [tasks.quadratic(d) for d in (2, 3, 4)]
  sampler = tasks.mixture(families, weights=[1.0, 2.0, 7.0])
  key = jax.random.key(5)
  picks = [sampler.sample(jax.random.fold_in(key, i)).name for i in range(2000)]
  frequencies = np.array([picks.count(f.name) for f in families]) / len(picks)
  np.testing.assert_allclose(frequencies, [0.1, 0.2, 0.7], atol=0.03)


def _shape_signature(family):
  """The parameter and batch shapes of a family's tasks: differs for different architectures, sizes, data sets
  and batch sizes (not for activations alone), without reading anything the sampler records about itself."""
  key = jax.random.key(0)
  task = family.task(family.sample(key))
  shapes = lambda tree: tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree))
  return shapes(jax.eval_shape(task.init, key)), shapes(jax.eval_shape(lambda k: task.batch(k, "train"), key))


def test_parametric_sampler_draws_64_distinct_structures_deterministically():
  sampler = tasks.parametric(num_structures=64, seed=0)
  pool = samplers.draw_pool(64, 0)
  assert [s for s, _ in pool] == [s for s, _ in samplers.draw_pool(64, 0)]
  assert [s for s, _ in pool] != [s for s, _ in samplers.draw_pool(64, 1)]
  assert pool[0][1]().name == sampler.families[0].name and pool[-1][1]().name == sampler.families[-1].name
  # 64 distinct structures: architecture, widths (and so depth), activation, data set, batch size; the continuous
  # draws within a family (initial scale, curvatures) do not count.
  structures = [structure for structure, _ in pool]
  assert len(set(structures)) == len(sampler.families) == 64
  assert len({s.architecture for s in structures}) >= 7
  assert len({s.widths for s in structures}) >= 16 and {len(s.widths) for s in structures} >= {1, 2}
  assert len({s.activation for s in structures} - {None}) >= 3
  assert len({s.data for s in structures} - {None}) >= 10 and len({s.batch_size for s in structures}) >= 5
  # A run sees every structure: 1,000 outer steps pick each of the 64 families.
  picks = {sampler.sample(jax.random.key(step)).name for step in range(1000)}
  assert picks == {f.name for f in sampler.families}


@pytest.mark.slow
def test_parametric_structures_are_different_programs():
  # Counted from the shapes alone (blind to activations), independently of what the sampler records: tracing
  # every family's init takes tens of seconds on 2 cores, hence slow.
  families = tasks.parametric(num_structures=64, seed=0).families
  assert len({_shape_signature(f) for f in families}) >= 48


def test_parametric_sampler_refuses_more_structures_than_its_kinds_allow():
  with pytest.raises(ValueError, match=r"task_samplers\.parametric\.num_structures: only \d+ distinct"):
    tasks.parametric(num_structures=40, kinds=("classic_2d",))
