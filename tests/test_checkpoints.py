"""Tests of lopt.checkpoints: round trip, pruning, fallback on corruption, and refusals."""

import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import checkpoints


def _state(seed: int = 0):
  params = {"dense": {"w": jnp.arange(6.0).reshape(2, 3) + seed, "b": jnp.zeros(3)},
            "layers": [jnp.ones((2,), jnp.bfloat16), jnp.full((), 2.5)]}
  opt_state = optax.adam(1e-3).init(params)
  # Take one real step so adam's moments and count are non-trivial.
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.1, params)
  _, opt_state = optax.adam(1e-3).update(grads, opt_state, params)
  key = jax.random.key_data(jax.random.key(seed))
  return {"params": params, "opt_state": opt_state, "key": key, "step": seed, "lr": 0.5}


def _assert_bit_exact(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


def test_round_trip_is_bit_exact(tmp_path):
  state = _state(3)
  path = checkpoints.save(str(tmp_path), 10, state)
  assert path == str(tmp_path / "checkpoint_00000010.msgpack")
  assert (tmp_path / "checkpoint_00000010.json").exists()
  restored, step = checkpoints.restore(str(tmp_path), _state(0))
  assert step == 10
  _assert_bit_exact(restored, state)
  assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
  assert restored["key"].dtype == np.uint32
  key = jax.random.wrap_key_data(restored["key"])
  assert jax.random.key_data(key).tolist() == np.asarray(state["key"]).tolist()


def test_restore_into_eval_shape_target(tmp_path):
  state = _state(1)
  checkpoints.save(str(tmp_path), 1, state)
  target = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, state))
  restored, _ = checkpoints.restore(str(tmp_path), target)
  _assert_bit_exact(restored, jax.tree.map(jnp.asarray, state))


def test_keep_last_k_and_latest_step(tmp_path):
  assert checkpoints.latest_step(str(tmp_path)) is None
  for step in (1, 2, 3, 4, 5):
    checkpoints.save(str(tmp_path), step, _state(step), keep=2)
  names = sorted(os.listdir(tmp_path))
  assert names == ["checkpoint_00000004.json", "checkpoint_00000004.msgpack",
                   "checkpoint_00000005.json", "checkpoint_00000005.msgpack"]
  assert checkpoints.latest_step(str(tmp_path)) == 5
  restored, step = checkpoints.restore(str(tmp_path), _state(0), step=4)
  assert step == 4 and restored["step"] == 4


def test_saving_an_earlier_step_drops_later_ones(tmp_path):
  for step in (1, 2, 3):
    checkpoints.save(str(tmp_path), step, _state(step))
  checkpoints.save(str(tmp_path), 2, _state(7))
  assert checkpoints.latest_step(str(tmp_path)) == 2
  restored, _ = checkpoints.restore(str(tmp_path), _state(0))
  assert restored["step"] == 7


def test_truncated_newest_falls_back_with_warning(tmp_path, caplog):
  checkpoints.save(str(tmp_path), 1, _state(1))
  newest = checkpoints.save(str(tmp_path), 2, _state(2))
  with open(newest, "r+b") as f:
    f.truncate(os.path.getsize(newest) // 2)
  with caplog.at_level(logging.WARNING):
    restored, step = checkpoints.restore(str(tmp_path), _state(0))
  assert step == 1 and restored["step"] == 1
  assert "checkpoint_00000002.msgpack" in caplog.text


def test_missing_sidecar_is_refused_not_skipped(tmp_path):
  # The sidecar is written first, so a msgpack without one is not an interrupted write: it cannot be verified, and
  # skipping it would resume from an older state (issue 16: a copy without .json files started over from step 0).
  checkpoints.save(str(tmp_path), 1, _state(1))
  checkpoints.save(str(tmp_path), 2, _state(2))
  os.remove(tmp_path / "checkpoint_00000002.json")
  assert checkpoints.latest_step(str(tmp_path)) == 1  # the newest *verifiable* one
  assert checkpoints.unverified_steps(str(tmp_path)) == [2]
  with pytest.raises(checkpoints.UnverifiedCheckpointError, match="checkpoint_00000002.msgpack") as info:
    checkpoints.restore(str(tmp_path), _state(0))
  assert info.value.paths == [checkpoints.checkpoint_path(str(tmp_path), 2)]
  restored, step = checkpoints.restore(str(tmp_path), _state(0), trust_unverified=True)
  assert step == 2 and restored["step"] == 2
  assert checkpoints.restore(str(tmp_path), _state(0), step=1)[1] == 1  # an explicit verified step is fine


def test_all_sidecars_missing_names_every_file_and_deletes_nothing(tmp_path):
  for step in (40, 50, 60):
    checkpoints.save(str(tmp_path), step, _state(step))
    os.remove(tmp_path / f"checkpoint_{step:08d}.json")
  with pytest.raises(checkpoints.UnverifiedCheckpointError) as info:
    checkpoints.restore(str(tmp_path), _state(0))
  for step in (40, 50, 60):
    assert f"checkpoint_{step:08d}.msgpack" in str(info.value)
  # Saving an earlier step (a fresh start) moves the later ones aside instead of deleting them.
  checkpoints.save(str(tmp_path), 10, _state(10))
  assert checkpoints.steps_on_disk(str(tmp_path)) == [10]
  assert sorted(os.listdir(tmp_path / checkpoints.ABANDONED)) == [f"checkpoint_{s:08d}.msgpack" for s in (40, 50, 60)]


def test_unverified_older_than_verified_is_not_an_error_and_pruned_only_behind_newer_verified(tmp_path):
  checkpoints.save(str(tmp_path), 1, _state(1))
  os.remove(tmp_path / "checkpoint_00000001.json")
  checkpoints.save(str(tmp_path), 2, _state(2), keep=2)
  assert checkpoints.restore(str(tmp_path), _state(0))[1] == 2
  assert checkpoints.steps_on_disk(str(tmp_path)) == [1, 2]  # one verified newer checkpoint, keep=2: 1 stays
  checkpoints.save(str(tmp_path), 3, _state(3), keep=2)
  assert checkpoints.steps_on_disk(str(tmp_path)) == [2, 3]  # two newer verified ones exist now


def test_interrupted_write_leftovers_are_removed(tmp_path):
  checkpoints.save(str(tmp_path), 1, _state(1))
  # A kill between the sidecar and the msgpack of step 2, and one inside a temporary file.
  (tmp_path / "checkpoint_00000002.json").write_text('{"step": 2, "sha256": "0", "num_bytes": 1}')
  (tmp_path / ".tmp_abc_checkpoint_00000003.msgpack").write_bytes(b"partial")
  assert checkpoints.latest_step(str(tmp_path)) == 1
  assert checkpoints.restore(str(tmp_path), _state(0))[1] == 1
  removed = checkpoints.remove_temporary_files(str(tmp_path))
  assert sorted(os.path.basename(p) for p in removed) == [".tmp_abc_checkpoint_00000003.msgpack",
                                                          "checkpoint_00000002.json"]
  assert sorted(os.listdir(tmp_path)) == ["checkpoint_00000001.json", "checkpoint_00000001.msgpack"]


@pytest.mark.parametrize("failing", ["sidecar", "msgpack"])
def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, failing_writes, failing):
  for step in (1, 2):
    checkpoints.save(str(tmp_path), step, _state(step), keep=2)
  before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
  failing_writes(".json" if failing == "sidecar" else ".msgpack")
  with pytest.raises(checkpoints.CheckpointWriteError, match="No space left.*newest intact checkpoint is step 2"):
    checkpoints.save(str(tmp_path), 3, _state(3), keep=2)
  assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
  failing_writes(None)
  assert checkpoints.restore(str(tmp_path), _state(0))[1] == 2


def test_failed_rewrite_of_a_step_keeps_its_old_sidecar(tmp_path, failing_writes):
  checkpoints.save(str(tmp_path), 1, _state(1))
  failing_writes(".msgpack", 30, "Read-only file system")
  with pytest.raises(checkpoints.CheckpointWriteError, match="Read-only"):
    checkpoints.save(str(tmp_path), 1, _state(5))
  restored, _ = checkpoints.restore(str(tmp_path), _state(0))
  assert restored["step"] == 1  # the old bytes, still verified by the old sidecar


def test_all_corrupt_raises_naming_files(tmp_path):
  for step in (1, 2):
    path = checkpoints.save(str(tmp_path), step, _state(step))
    with open(path, "r+b") as f:
      f.seek(20)
      f.write(b"garbage")
  with pytest.raises(checkpoints.CheckpointError) as info:
    checkpoints.restore(str(tmp_path), _state(0))
  assert "checkpoint_00000001.msgpack" in str(info.value)
  assert "checkpoint_00000002.msgpack" in str(info.value)


def test_no_checkpoints_raises(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match="No checkpoints"):
    checkpoints.restore(str(tmp_path), _state(0))
  with pytest.raises(checkpoints.CheckpointError, match="step 5"):
    checkpoints.restore(str(tmp_path), _state(0), step=5)


@pytest.mark.parametrize("change", ["extra_key", "missing_key", "other_optimizer", "shape"])
def test_structure_mismatch_raises_naming_file(tmp_path, change):
  checkpoints.save(str(tmp_path), 3, _state(1))
  target = _state(0)
  if change == "extra_key":
    target["extra"] = jnp.zeros(2)
  elif change == "missing_key":
    del target["lr"]
  elif change == "other_optimizer":
    target["opt_state"] = optax.sgd(0.1, momentum=0.9).init(target["params"])
  else:
    target["params"]["dense"]["w"] = jnp.zeros((3, 3))
  with pytest.raises(checkpoints.CheckpointError, match="checkpoint_00000003.msgpack"):
    checkpoints.restore(str(tmp_path), target)


def test_typed_prng_key_refused(tmp_path):
  with pytest.raises(TypeError, match="key_data"):
    checkpoints.save(str(tmp_path), 0, {"rng": jax.random.key(0)})
  assert not os.listdir(tmp_path)


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="keep"):
    checkpoints.save(str(tmp_path), 0, {"a": 1}, keep=0)
  with pytest.raises(ValueError, match="step"):
    checkpoints.save(str(tmp_path), -1, {"a": 1})


def test_ensure_writable_dir(tmp_path):
  good = tmp_path / "a" / "b"
  checkpoints.ensure_writable_dir(str(good))
  assert good.is_dir() and not os.listdir(good)
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  bad = str(blocker / "workdir")
  with pytest.raises(ValueError, match=re.escape(bad)):
    checkpoints.ensure_writable_dir(bad)
  with pytest.raises(ValueError, match=re.escape(str(blocker))):
    checkpoints.ensure_writable_dir(str(blocker))
