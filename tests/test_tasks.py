"""Family-specific tests of quadratic and image_mlp, and of the bundled digits data.

The checks every family must pass (finite gradients, vmap, determinism, normaliser, Adam) live in
``test_task_conformance.py``.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import datasets

from lopt import registry
from lopt import tasks
from lopt.tasks import data

# id -> (registered name, small factory arguments, Adam learning rate, largest allowed final / initial loss ratio).
FAMILIES = {
    "quadratic": ("quadratic", {"dim": 8}, 1e-1, 1e-2),
    "noisy_quadratic": ("quadratic", {"dim": 8, "noise_std": 0.5}, 1e-1, 0.2),
    "image_mlp": ("image_mlp", {"hidden_sizes": (16,), "batch_size": 32}, 1e-3, 0.8),
}


def make_family(family_id: str) -> tasks.TaskFamily:
  name, kwargs, _, _ = FAMILIES[family_id]
  return registry.lookup("task_family", name)(**kwargs)


def sampled_task(family: tasks.TaskFamily, seed: int = 0) -> tasks.Task:
  return family.task(family.sample(jax.random.key(seed)))


def trees_equal(a, b) -> bool:
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_families_are_registered_with_descriptions():
  assert {"quadratic", "image_mlp"} <= set(registry.names("task_family"))
  for name in ("quadratic", "image_mlp"):
    assert registry.describe("task_family", name)


@pytest.mark.parametrize("family_id", ["noisy_quadratic", "image_mlp"])
def test_stochastic_batches_depend_on_key(family_id):
  task = sampled_task(make_family(family_id))
  assert not trees_equal(task.batch(jax.random.key(0), "train"), task.batch(jax.random.key(1), "train"))


@pytest.mark.parametrize("family_id", FAMILIES)
def test_unknown_split_raises(family_id):
  task = sampled_task(make_family(family_id))
  with pytest.raises(ValueError, match="outer_valid"):
    task.batch(jax.random.key(0), "valid")


def test_quadratic_loss_formula_and_deterministic_batches():
  family = tasks.quadratic(5)
  cfg = family.sample(jax.random.key(0))
  task = family.task(cfg)
  key = jax.random.key(1)
  zeros = task.batch(key, "train")
  np.testing.assert_array_equal(zeros, np.zeros(5))
  assert task.loss({"x": cfg["center"]}, key, zeros) == 0.0
  np.testing.assert_allclose(task.loss({"x": cfg["center"] + 1.0}, key, zeros), 0.5 * np.mean(cfg["scales"]),
                             rtol=1e-6)
  assert task.accuracy is None


def test_quadratic_cfg_ranges_and_names():
  family = tasks.quadratic(16, min_scale=0.5, max_scale=2.0)
  scales = jax.vmap(family.sample)(jax.random.split(jax.random.key(0), 8))["scales"]
  assert scales.shape == (8, 16)
  assert np.all((scales >= 0.5 - 1e-6) & (scales <= 2.0 + 1e-6))
  assert len({tasks.quadratic(8).name, tasks.quadratic(16).name, tasks.quadratic(8, noise_std=0.1).name,
              family.name}) == 4


def test_image_mlp_init_scale_multiplies_initial_weights():
  family = tasks.image_mlp(hidden_sizes=(8, 8), batch_size=4)
  key = jax.random.key(0)
  unit = family.task({"init_scale": jnp.float32(1.0)}).init(key)
  scaled = family.task({"init_scale": jnp.float32(1.5)}).init(key)
  for a, b in zip(jax.tree.leaves(unit), jax.tree.leaves(scaled)):
    np.testing.assert_allclose(b, 1.5 * a, rtol=1e-6)
  kernels = [leaf.shape for leaf in jax.tree.leaves(unit) if leaf.ndim == 2]
  assert kernels == [(64, 8), (8, 8), (8, 10)]
  init_scales = jax.vmap(family.sample)(jax.random.split(key, 64))["init_scale"]
  assert init_scales.shape == (64,) and np.all((init_scales >= 0.5) & (init_scales <= 2.0))


def test_image_mlp_batches_and_names():
  task = sampled_task(tasks.image_mlp(hidden_sizes=(), batch_size=7))
  x, y = task.batch(jax.random.key(0), "test")
  assert x.shape == (7, 64) and y.shape == (7,)
  names = {tasks.image_mlp().name, tasks.image_mlp(hidden_sizes=(16, 16)).name,
           tasks.image_mlp(batch_size=64).name, tasks.image_mlp(activation="tanh").name}
  assert len(names) == 4


def test_image_mlp_rejects_unknown_activation_and_data_set():
  with pytest.raises(ValueError, match="relu"):
    tasks.image_mlp(activation="rleu")
  with pytest.raises(ValueError, match="Did you mean 'digits'"):
    tasks.image_mlp(dataset="digit")


def test_digits_splits_partition_the_data_set():
  splits = data.digits()
  assert [split.x.shape for split in splits] == [(1197, 64), (300, 64), (300, 64)]
  assert [split.y.shape for split in splits] == [(1197,), (300,), (300,)]
  for split in splits:
    assert split.x.dtype == jnp.float32 and split.y.dtype == jnp.int32
    assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0
    assert set(np.unique(split.y)) == set(range(10))
  # The concatenated splits are a permutation of the original rows (which are all distinct), so the splits are
  # disjoint and cover every image.
  raw = datasets.load_digits()
  ours = np.concatenate([np.concatenate([s.x * 16, s.y[:, None]], axis=1) for s in splits])
  theirs = np.concatenate([raw.data, raw.target[:, None]], axis=1)
  np.testing.assert_array_equal(np.unique(ours, axis=0), np.unique(theirs, axis=0))
  assert len(np.unique(ours, axis=0)) == 1797
  assert data.num_classes(splits) == 10


def test_digits_is_cached_and_seeded():
  assert data.digits(0) is data.digits(0)
  assert data.load("digits") is data.digits()
  assert not np.array_equal(data.digits(0).test.y, data.digits(1).test.y)


def test_unknown_data_set_names_closest_match():
  with pytest.raises(ValueError, match="Did you mean 'digits'") as error:
    data.load("digts")
  assert "Supported: " in str(error.value) and "digits" in str(error.value)
  with pytest.raises(ValueError, match="Unknown data set") as error:
    data.load("xyzzy")
  assert "Did you mean" not in str(error.value)


def test_sample_batch_shapes_membership_and_coverage():
  split = data.digits().outer_valid
  x, y = data.sample_batch(split, jax.random.key(0), 16)
  assert x.shape == (16, 64) and x.dtype == jnp.float32
  assert y.shape == (16,) and y.dtype == jnp.int32
  x_again, y_again = data.sample_batch(split, jax.random.key(0), 16)
  np.testing.assert_array_equal(x, x_again)
  np.testing.assert_array_equal(y, y_again)
  rows = {row.tobytes(): label for row, label in zip(np.asarray(split.x), np.asarray(split.y))}
  assert all(rows[row.tobytes()] == label for row, label in zip(np.asarray(x), np.asarray(y)))

  sample = jax.jit(jax.vmap(lambda key: data.sample_batch(split, key, 2048)))
  xs, ys = sample(jax.random.split(jax.random.key(1), 3))
  assert xs.shape == (3, 2048, 64) and ys.shape == (3, 2048)
  assert len(np.unique(np.asarray(xs[0]), axis=0)) > 290  # Uniform draws reach almost every one of the 300 rows.


def test_fixed_sampler_always_returns_its_family():
  family = tasks.quadratic(4)
  sampler = registry.lookup("task_sampler", "fixed")(family)
  assert isinstance(sampler, tasks.TaskSampler)
  assert sampler.families == (family,)
  assert all(sampler.sample(jax.random.key(seed)) is family for seed in range(3))
  assert family.name in sampler.name
