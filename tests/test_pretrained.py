"""``lopt.pretrained``: the shipped weights load with their checksum verified and beat Adam(1e-3) on a small task;
a corrupt or missing weights file, or an unknown name, gets an error naming it."""

import os
import shutil

import jax
import numpy as np
import optax
import pytest

import lopt
from lopt import pretrained
from lopt.architectures import ff
from lopt.evaluation import training
from lopt.tasks import image_mlp

SHIPPED = "ff_v1"


def test_shipped_weights_load_verified_and_beat_adam_on_a_small_task():
  assert SHIPPED in lopt.pretrained.names()
  loaded = pretrained.load(SHIPPED)
  assert loaded.architecture.name == loaded.entry["architecture"]
  assert os.path.getsize(os.path.join(pretrained.PACKAGE_DIR, loaded.entry["file"])) < 200_000
  tx = lopt.pretrained.optimizer(SHIPPED, num_steps=200)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  family = image_mlp(hidden_sizes=(32,), batch_size=128)  # a task of lopt's default suite
  key = jax.random.key(11)
  common = dict(num_tasks=2, num_steps=200)
  ours = training.train_tasks(family, lambda n: loaded.optimizer(num_steps=n), key, **common)["train_loss"]
  adam = training.train_tasks(family, lambda n: optax.with_extra_args_support(optax.adam(1e-3)), key,
                              **common)["train_loss"]
  assert np.all(np.isfinite(ours))
  assert np.mean(ours[:, -20:]) < np.mean(adam[:, -20:])


@pytest.fixture
def shipped_copy(tmp_path):
  """A private copy of a tiny optimizer in a directory of its own (the installed files are never touched)."""
  arch = ff.ff(hidden_sizes=(4,))
  pretrained.save("tiny", architecture="ff", kwargs={"hidden_sizes": [4]}, theta=arch.init(jax.random.key(0)),
                  source={"note": "test"}, directory=str(tmp_path))
  return tmp_path


def test_saved_optimizer_round_trips_and_unknown_name_is_named(shipped_copy):
  assert pretrained.names(str(shipped_copy)) == ["tiny"]
  loaded = pretrained.load("tiny", directory=str(shipped_copy))
  expected = ff.ff(hidden_sizes=(4,)).init(jax.random.key(0))
  for a, b in zip(jax.tree.leaves(loaded.theta), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(pretrained.PretrainedError, match="No pretrained optimizer named 'tiyn'.*Did you mean 'tiny'"):
    pretrained.load("tiyn", directory=str(shipped_copy))


def test_corrupt_or_missing_weights_file_is_named(shipped_copy):
  weights = shipped_copy / "tiny.msgpack"
  data = weights.read_bytes()
  weights.write_bytes(data[:-7])  # truncated
  with pytest.raises(pretrained.PretrainedError, match=f"corrupt: {weights}"):
    pretrained.load("tiny", directory=str(shipped_copy))
  weights.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])  # one bit flipped
  with pytest.raises(pretrained.PretrainedError, match="does not match the sha256"):
    pretrained.load("tiny", directory=str(shipped_copy))
  weights.unlink()
  with pytest.raises(pretrained.PretrainedError, match=f"missing or unreadable: {weights}"):
    pretrained.load("tiny", directory=str(shipped_copy))


def test_theta_of_another_architecture_is_refused(shipped_copy, tmp_path):
  other = tmp_path / "other"
  shutil.copytree(shipped_copy, other)
  manifest = (other / "manifest.json").read_text().replace('"hidden_sizes": [\n    4\n   ]', '"hidden_sizes": [8]')
  (other / "manifest.json").write_text(manifest)
  with pytest.raises(pretrained.PretrainedError, match="does not fit architecture ff"):
    pretrained.load("tiny", directory=str(other))


def test_optimizer_can_be_built_inside_a_jitted_function():
  params = {"w": np.ones((3, 2), np.float32)}

  @jax.jit
  def one_step(params):
    tx = lopt.pretrained.optimizer(SHIPPED, num_steps=10)
    updates, _ = tx.update(params, tx.init(params), params)
    return updates

  assert np.all(np.isfinite(np.asarray(one_step(params)["w"])))
