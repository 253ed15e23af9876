"""Every registered task sampler keeps the contract the outer loop relies on.

The test is parameterised over ``registry.names("task_sampler")``, so a new sampler is checked the moment it is
registered; it only needs an entry in ``SAMPLERS`` saying how to build a small instance of it.
"""

import collections

import jax
import numpy as np
import pytest

import lopt
from lopt import registry
from lopt.tasks import quadratic, quadratic_structures

FAMILIES = (quadratic(dim=2), quadratic(dim=3), quadratic(dim=4))

# How to build a small instance of each sampler, and how many distinct families that instance holds.
SAMPLERS = {
    "fixed": (lambda f: f(FAMILIES[0]), 1),
    "mixture": (lambda f: f(list(FAMILIES), weights=[1.0, 1.0, 2.0]), 3),
    "parametric": (lambda f: f(num_structures=6, seed=3, kinds=("quadratic", "classic_2d")), None),
    "structures": (lambda f: f([quadratic_structures(max_dim=4), quadratic_structures(max_dim=8)]), 2),
}
NAMES = registry.names("task_sampler")
DRAWS = 300


def build(name: str) -> tuple[lopt.TaskSampler, int | None]:
  make, size = SAMPLERS[name]
  return make(registry.lookup("task_sampler", name)), size


def test_every_registered_sampler_has_an_entry():
  assert NAMES, "no task sampler registered"
  assert sorted(SAMPLERS) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_sample_returns_members_deterministically(name):
  sampler, size = build(name)
  families = sampler.families
  assert isinstance(sampler.name, str) and sampler.name
  names = [f.name for f in families]
  assert len(set(names)) == len(names), "family names key compiled programs, so they must be distinct"
  if size is not None:
    assert len(families) == size
  key = jax.random.key(7)
  picks = [sampler.sample(jax.random.fold_in(key, i)) for i in range(DRAWS)]
  assert all(any(p is f for f in families) for p in picks), "sample() returned a family outside .families"
  again = [sampler.sample(jax.random.fold_in(key, i)).name for i in range(DRAWS)]
  assert [p.name for p in picks] == again
  # Raw key data (what a checkpointed key holds) picks the same families as the typed key.
  raw = [sampler.sample(jax.random.key_data(jax.random.fold_in(key, i))).name for i in range(20)]
  assert raw == again[:20]


@pytest.mark.parametrize("name", NAMES)
def test_every_family_gets_drawn_and_builds_a_task(name):
  sampler, _ = build(name)
  counts = collections.Counter(sampler.sample(jax.random.key(i)).name for i in range(DRAWS))
  assert set(counts) == {f.name for f in sampler.families}
  for family in sampler.families:
    task = family.task(family.sample(jax.random.key(0)))
    params = task.init(jax.random.key(1))
    loss = task.loss(params, jax.random.key(2), task.batch(jax.random.key(3), "train"))
    assert np.isfinite(float(loss)), family.name
