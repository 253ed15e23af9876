"""The outer-validation loss reaches architectures that read it (Metz et al. 2020), in unrolls and in evaluation.

A spy architecture records, at every step, its parameters and the ``loss`` and ``valid_loss`` its ``update`` was
given. The test family's splits differ: the training batch is a noisy target, the outer-validation batch a fixed
shifted one (``VALID_SHIFT``), so the validation loss at a step is a function of the parameters alone, computed
here by hand from the recorded parameters, and is far from the training loss. The recorded values must equal that
function at steps 0, N, 2N, ... of each truncation and stay constant in between. Any break in the plumbing (not
passed, zeros, stale, wrong cadence, read from the training split, the training loss fed instead) changes them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.architectures.base import LearnedOptimizer
from lopt.evaluation import hooks, training
from lopt.meta_trainers import es, pes, tbptt, unroll
from lopt.registry import lookup
from lopt.tasks import fixed, quadratic
from lopt.tasks.base import SPLITS, Task, TaskFamily

SLOTS, DIM, NOISE, VALID_SHIFT = 16, 3, 0.5, 1.0


def split_family() -> TaskFamily:
  """Quadratics ``0.5 mean((x - b)^2)`` whose batch ``b`` is noise for ``train`` and ``VALID_SHIFT`` for
  ``outer_valid`` (``-VALID_SHIFT`` for ``test``)."""

  def task(cfg):
    del cfg

    def batch(key, split):
      if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}'.")
      if split == "train":
        return NOISE * jax.random.normal(key, (DIM,))
      return jnp.full((DIM,), VALID_SHIFT if split == "outer_valid" else -VALID_SHIFT)

    return Task(init=lambda key: {"x": jax.random.normal(key, (DIM,))},
                loss=lambda params, key, b: 0.5 * jnp.mean((params["x"] - b) ** 2), batch=batch,
                normalize=lambda loss: loss)

  return TaskFamily(name="split_quadratic", sample=lambda key: {"seed": jnp.zeros([])}, task=task)


def valid_loss_of(x: np.ndarray) -> np.ndarray:
  """The outer-validation loss of parameters ``x`` (..., DIM), by hand."""
  return 0.5 * np.mean((np.asarray(x) - VALID_SHIFT) ** 2, axis=-1)


def spy(reads_valid_loss: bool = True, record: list | None = None) -> LearnedOptimizer:
  """Plain SGD that keeps (in its state) the parameters, loss and valid_loss of each of its first SLOTS steps; with
  ``record``, also appends ``(step, x, loss, valid_loss)`` to it from the device (for programs that return no
  optimizer state)."""

  def optimizer(theta, *, num_steps):
    del num_steps

    def init(params):
      del params
      return {"count": jnp.zeros([], jnp.int32), "loss": jnp.zeros(SLOTS), "valid": jnp.full(SLOTS, -1.0),
              "x": jnp.zeros((SLOTS, DIM))}

    def update(grads, state, params=None, *, loss=None, valid_loss=None, **extra):
      del extra
      i = jnp.minimum(state["count"], SLOTS - 1)
      valid = jnp.asarray(-2.0 if valid_loss is None else valid_loss, jnp.float32)
      x = params["x"] if "x" in params else jnp.zeros(DIM)
      if record is not None:
        jax.debug.callback(lambda *v: record.append(tuple(np.asarray(a) for a in v)), state["count"], x, loss, valid)
      new = {"count": state["count"] + 1, "loss": state["loss"].at[i].set(loss),
             "valid": state["valid"].at[i].set(valid), "x": state["x"].at[i].set(jnp.resize(x, (DIM,)))}
      return jax.tree.map(lambda g: -theta["lr"] * g, grads), new

    return optax.GradientTransformationExtraArgs(init, update)

  return LearnedOptimizer(name="spy", init=lambda key: {"lr": jnp.asarray(0.05)}, optimizer=optimizer,
                          reads_valid_loss=reads_valid_loss)


def expected_valid(xs: np.ndarray, every: int, truncation: int | None = None) -> np.ndarray:
  """The validation loss fed at each step: that of the parameters at the latest step ``0, every, 2 every, ...``
  counted from the start of the step's truncation."""
  truncation = truncation or len(xs)
  starts = [(i // truncation) * truncation + ((i % truncation) // every) * every for i in range(len(xs))]
  return valid_loss_of(np.asarray(xs)[starts])


def _unroll(every, steps=7, split="train"):
  family, arch = split_family(), spy()
  theta = arch.init(jax.random.key(0))
  state = unroll.init_task_state(theta, jax.random.key(1), 20, task_family=family, learned_optimizer=arch)
  return jax.jit(lambda s: unroll.unroll(theta, s, jax.random.key(2), steps, task_family=family,
                                         learned_optimizer=arch, valid_every=every, meta_loss_split=split))(state)


@pytest.mark.parametrize("every", [1, 3])
def test_unroll_feeds_the_latest_validation_loss(every):
  new, _ = _unroll(every)
  xs, losses, valid = (np.asarray(new.opt_state[k][:7]) for k in ("x", "loss", "valid"))
  assert len(set(np.round(losses, 6))) == 7  # the loss moves, so a stale value would show
  # The training loss is far from the validation loss: feeding one for the other, or the other split, would show.
  assert np.min(np.abs(losses - valid_loss_of(xs))) > 0.05
  np.testing.assert_allclose(valid, expected_valid(xs, every), rtol=1e-5)


def test_unroll_scores_the_outer_valid_split():
  new, meta_losses = _unroll(0, split="outer_valid")
  xs, losses = np.asarray(new.opt_state["x"][:7]), np.asarray(new.opt_state["loss"][:7])
  np.testing.assert_allclose(np.asarray(meta_losses), valid_loss_of(xs), rtol=1e-5)
  assert np.min(np.abs(losses - valid_loss_of(xs))) > 0.05
  _, train_meta_losses = _unroll(0, split="train")
  np.testing.assert_allclose(np.asarray(train_meta_losses), losses, rtol=1e-5)


ESTIMATORS = {
    "pes": lambda **kw: pes.pes(**kw),
    "es": lambda **kw: es.es(**kw),
    "tbptt": lambda **kw: tbptt.tbptt(**kw),
}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_meta_training_estimators_feed_it_and_score_the_outer_valid_split(name):
  """One truncation of 6 steps with ``valid_every=4``: fed at steps 0 and 4; the meta-loss is the mean
  outer-validation loss over the truncation."""
  family, arch = split_family(), spy()
  estimator = ESTIMATORS[name](num_tasks=2, truncation_length=6, horizon=12, valid_every=4, stagger=False,
                               meta_loss_split="outer_valid")
  settings = estimator.settings[0] if isinstance(estimator.settings, tuple) else estimator.settings
  assert settings.valid_every == 4 and settings.meta_loss_split == "outer_valid"
  theta = arch.init(jax.random.key(0))
  kw = dict(task_family=family, learned_optimizer=arch)
  state = estimator.init(theta, jax.random.key(1), **kw)
  _, state, metrics = jax.jit(lambda s: estimator.estimate(theta, s, jax.random.key(2), **kw))(state)
  inner = state.inner if hasattr(state, "inner") else state
  opt_state = jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[inner.step.ndim:]), inner.opt_state)
  assert np.all(opt_state["count"] == 6)
  xs, losses, valid = opt_state["x"][:, :6], opt_state["loss"][:, :6], opt_state["valid"][:, :6]
  assert np.min(np.abs(losses - valid_loss_of(xs))) > 0.05
  for task in range(len(xs)):
    np.testing.assert_allclose(valid[task], expected_valid(xs[task], 4), rtol=1e-5)
  # The meta-loss: per slot (and sign) the mean outer-validation loss of the truncation, averaged. ES keeps only
  # its + copies, whose losses differ from the - copies' by the perturbation (std 0.01): a looser tolerance, still
  # far below the gap to the training loss (> 0.05 at every step).
  np.testing.assert_allclose(float(metrics["meta_loss"]), np.mean(valid_loss_of(xs)),
                             rtol=1e-2 if name == "es" else 1e-4)


def test_evaluation_feeds_it_for_architectures_that_read_it():
  record = []
  family, arch = split_family(), spy(record=record)
  theta = arch.init(jax.random.key(0))
  assert training.valid_every_for(arch) == training.VALID_EVERY
  assert training.valid_every_for(spy(reads_valid_loss=False)) == 0
  result = training.train_tasks(family, lambda n: arch.optimizer(theta, num_steps=n), jax.random.key(3),
                                num_tasks=1, num_steps=12, valid_every=4)
  assert result["train_loss"].shape == (1, 12)
  steps = sorted(record, key=lambda r: int(r[0]))
  assert [int(r[0]) for r in steps] == list(range(12))
  xs, losses, valid = (np.stack([r[i] for r in steps]) for i in (1, 2, 3))
  assert np.min(np.abs(losses - valid_loss_of(xs))) > 0.05
  np.testing.assert_allclose(valid, expected_valid(xs, 4), rtol=1e-5)
  # The periodic meta-evaluation trains with it too, every training.VALID_EVERY steps.
  record.clear()
  out = hooks.periodic_meta_eval(num_tasks=1, num_steps=12, compare_adam=False)(
      theta=theta, step=0, architecture=arch, task_sampler=fixed(family))
  assert np.isfinite(out["mean/final_train_loss"])
  steps = sorted(record, key=lambda r: int(r[0]))
  xs, valid = np.stack([r[1] for r in steps]), np.stack([r[3] for r in steps])
  np.testing.assert_allclose(valid, expected_valid(xs, training.VALID_EVERY), rtol=1e-5)


def test_unroll_does_not_feed_when_off_or_not_read():
  family = split_family()
  for arch, every in ((spy(), 0), (spy(reads_valid_loss=False), 3)):
    theta = arch.init(jax.random.key(0))
    state = unroll.init_task_state(theta, jax.random.key(1), 20, task_family=family, learned_optimizer=arch)
    new, _ = unroll.unroll(theta, state, jax.random.key(2), 4, task_family=family, learned_optimizer=arch,
                           valid_every=every)
    np.testing.assert_array_equal(np.asarray(new.opt_state["valid"][:4]), -2.0)


def test_per_tensor_reads_it_and_its_features_change_the_update():
  arch = lookup("architecture", "per_tensor")()
  assert arch.reads_valid_loss
  theta = jax.tree.map(lambda x: x + 0.1, arch.init(jax.random.key(0)))  # non-zero heads, so inputs matter
  params = {"w": jnp.ones((4, 3))}
  tx = arch.optimizer(theta, num_steps=10)
  state = tx.init(params)
  grads = {"w": jnp.full((4, 3), 0.1)}
  _, state = tx.update(grads, state, params, loss=1.0, valid_loss=1.0)  # features compare with earlier losses
  low, _ = tx.update(grads, state, params, loss=1.0, valid_loss=0.5)
  high, _ = tx.update(grads, state, params, loss=1.0, valid_loss=5.0)
  assert not np.allclose(np.asarray(low["w"]), np.asarray(high["w"]))


def test_family_without_validation_split_is_named():
  base = quadratic(dim=2)

  def task(cfg):
    inner = base.task(cfg)

    def batch(key, split):
      if split == "outer_valid":
        raise ValueError("no outer_valid split here")
      return inner.batch(key, split)

    return Task(init=inner.init, loss=inner.loss, batch=batch, normalize=inner.normalize)

  family = TaskFamily(name="no_valid_family", sample=base.sample, task=task)
  arch = spy()
  theta = arch.init(jax.random.key(0))
  state = unroll.init_task_state(theta, jax.random.key(1), 10, task_family=family, learned_optimizer=arch)
  with pytest.raises(ValueError, match="no_valid_family.*outer_valid"):
    unroll.unroll(theta, state, jax.random.key(2), 2, task_family=family, learned_optimizer=arch, valid_every=2)
  with pytest.raises(ValueError, match="no_valid_family"):
    training.train_tasks(family, lambda n: arch.optimizer(theta, num_steps=n), jax.random.key(0), num_tasks=1,
                         num_steps=2, valid_every=2)


def test_suite_evaluation_feeds_it():
  from lopt.evaluation import scoring, tuned_baselines

  arch = spy()
  theta = arch.init(jax.random.key(0))
  seen = []

  def make(n):
    tx = arch.optimizer(theta, num_steps=n)

    def update(grads, state, params=None, **extra):
      seen.append("valid_loss" in extra)
      return tx.update(grads, state, params, **extra)

    return optax.GradientTransformationExtraArgs(tx.init, update)

  scoring.evaluate_suite({"quadratic": quadratic(dim=3)}, baselines=tuned_baselines.default_baselines(names=["adam"]),
                         learned=make, learned_valid_every=4, num_steps=8, num_seeds=1, printer=lambda line: None)
  assert seen and all(seen)
