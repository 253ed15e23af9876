"""Each learned architecture meta-trains with PES on the quadratic family: its full-horizon meta-loss falls.

Slow (compilation dominates): ``python -m pytest -m slow -s tests/test_architectures_meta_train.py`` prints the
meta-loss before and after, the numbers quoted in docs/architectures.md.
"""

import jax
import jax.numpy as jnp
import pytest

import lopt.architectures  # noqa: F401  registers every architecture.
from lopt import registry
from lopt.meta_trainers import outer_loop
from lopt.meta_trainers import pes as pes_lib
from lopt.meta_trainers import unroll as unroll_lib
from lopt.tasks import fixed, quadratic



def _has_meta_parameters(name: str) -> bool:
  theta = registry.lookup("architecture", name)().init(jax.random.key(0))
  return sum(leaf.size for leaf in jax.tree.leaves(theta)) > 0


# Every registered architecture with meta-parameters (the optax baselines have none, so nothing to meta-train).
LEARNED = [name for name in registry.names("architecture") if _has_meta_parameters(name)]
HORIZON = 20


def full_horizon_meta_loss(arch, theta, family, num_tasks: int = 32) -> float:
  """Mean normalised training loss over whole episodes of fixed held-out tasks (a deterministic meta-loss)."""
  keys = jax.random.split(jax.random.key(1234), num_tasks)

  def one(key):
    state = unroll_lib.init_task_state(theta, key, HORIZON, task_family=family, learned_optimizer=arch)
    _, losses = unroll_lib.unroll(theta, state, jax.random.fold_in(key, 1), HORIZON, task_family=family,
                                  learned_optimizer=arch)
    return jnp.mean(losses)

  return float(jnp.mean(jax.jit(jax.vmap(one))(keys)))


@pytest.mark.slow
@pytest.mark.parametrize("name", LEARNED)
def test_pes_meta_training_lowers_meta_loss(name, tmp_path):
  family = quadratic(dim=4)
  arch = registry.lookup("architecture", name)()
  result = outer_loop.meta_train(
      task_sampler=fixed(family), architecture=arch,
      estimator=pes_lib.pes(num_tasks=8, truncation_length=5, horizon=HORIZON, std=0.01),
      meta_optimizer=outer_loop.default_meta_optimizer(learning_rate=1e-2), num_outer_steps=300,
      workdir=str(tmp_path), wandb_mode="disabled", log_every=100, checkpoint_every=1000)
  before = full_horizon_meta_loss(arch, arch.init(jax.random.split(jax.random.key(0), 3)[0]), family)
  after = full_horizon_meta_loss(arch, result.theta, family)
  print(f"\n{name}: full-horizon meta-loss {before:.4f} -> {after:.4f}")
  assert after < 0.9 * before
