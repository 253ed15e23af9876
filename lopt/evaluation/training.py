"""Training tasks with any optax optimizer, scored on the test split: the program every evaluation runs.

Held-out tasks are drawn from a key stream that meta-training never uses (``HELDOUT_SEED_OFFSET``), and scored on
the test split, which no estimator reads.

Everything trains through one program shape: ``num_tasks`` tasks of a family (seeds), vmapped, for ``num_steps``
inner steps in a ``lax.scan``, optionally measuring the test loss every ``eval_every`` steps. ``train_tasks`` runs
one optimizer; ``train_grid`` also vmaps over a hyperparameter grid (e.g. Adam's learning rates), so a whole grid
is one compile; ``compile_trainer`` returns the jitted program for repeated calls with different meta-parameters.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import arguments
from lopt.architectures.base import LearnedOptimizer
from lopt.meta_trainers import unroll
from lopt.tasks.base import Task, TaskFamily
from lopt.types import Params, PRNGKey

HELDOUT_SEED_OFFSET = 1_000_003

OptimizerFactory = Callable[[int], optax.GradientTransformationExtraArgs]
# ``(hparams, num_steps) -> optax transformation``: hparams is a learning rate of a grid, theta, or None.
ParamOptimizerFactory = Callable[[Any, int], optax.GradientTransformationExtraArgs]
# ``(opt_state, params) -> params`` to evaluate (schedule-free optimizers evaluate an average, not the iterate).
EvalParams = Callable[[optax.OptState, Params], Params]

# XLA options that cut the CPU compile time of these small programs 3-5x (measured on 2 cores), but make steps
# slower, up to 15x for conv nets: worth it only for programs whose compile dwarfs their run (few, short runs).
FAST_COMPILE: dict[str, Any] = {"xla_backend_optimization_level": 0}

# Evaluation feeds the validation loss as often as meta-training does by default (``Truncation.valid_every``).
VALID_EVERY = 10


def valid_every_for(architecture: LearnedOptimizer, valid_every: int = VALID_EVERY) -> int:
  """``valid_every`` for training with ``architecture``: the given value if it reads ``valid_loss``, else 0."""
  return valid_every if unroll.feeds_valid_loss(architecture, valid_every) else 0


def _jit(fn: Callable[..., Any], compiler_options: Mapping[str, Any] | None) -> Callable[..., Any]:
  """``jax.jit(fn)``, compiled ahead of time with ``compiler_options`` (once, at the first call) when given."""
  jitted = jax.jit(fn)
  if not compiler_options:
    return jitted
  compiled = {}

  def call(*args):
    signature = jax.tree.structure(args), tuple((np.shape(x), str(getattr(x, "dtype", type(x))))
                                              for x in jax.tree.leaves(args))
    if signature not in compiled:
      compiled[signature] = jitted.lower(*args).compile(compiler_options=dict(compiler_options))
    return compiled[signature](*args)

  return call


def eval_steps(num_steps: int, eval_every: int) -> list[int]:
  """Inner steps (updates done) at which the test loss is measured: 0, k, 2k, ... (k = ``eval_every``), and the end.

  With ``eval_every <= 0`` or larger than ``num_steps`` only the end is measured.
  """
  chunks = num_steps // eval_every if eval_every > 0 else 0
  points = [i * eval_every for i in range(chunks + 1)] if chunks else []
  return points + ([num_steps] if chunks * eval_every < num_steps else [])


def _test_metrics(task: Task, params: Params, key: PRNGKey, num_batches: int) -> tuple[jax.Array, jax.Array]:
  """Mean normalised test loss and accuracy (NaN for tasks without one) over ``num_batches`` test batches."""

  def one(k):
    batch = task.batch(k, "test")
    accuracy = task.accuracy(params, batch) if task.accuracy is not None else jnp.float32(jnp.nan)
    return task.normalize(task.loss(params, key, batch)), accuracy

  losses, accuracies = jax.vmap(one)(jax.random.split(key, num_batches))
  return jnp.mean(losses), jnp.mean(accuracies)


def _program(family: TaskFamily, make_optimizer: ParamOptimizerFactory, *, num_tasks: int, num_steps: int,
             eval_every: int, num_eval_batches: int, eval_params: EvalParams | None,
             valid_every: int = 0) -> Callable[[Any, PRNGKey], dict[str, jax.Array]]:
  """``(hparams, key) -> results`` for ``num_tasks`` tasks of ``family`` (vmapped over tasks, not jitted)."""
  if num_steps < 1 or num_tasks < 1 or num_eval_batches < 1:
    raise ValueError(f"num_steps, num_tasks and num_eval_batches must be positive, got {num_steps}, {num_tasks}, "
                     f"{num_eval_batches}.")

  valid_every = arguments.integer("valid_every", valid_every, minimum=0)

  def one_task(hparams, task_key):
    tx = make_optimizer(hparams, num_steps)
    cfg_key, init_key, data_key, eval_key = jax.random.split(task_key, 4)
    task = family.task(family.sample(cfg_key))
    params = task.init(init_key)
    if valid_every:
      unroll.check_validation_split(task, family)

    def step(carry, xs):
      params, opt_state, valid_loss = carry
      k, index = xs
      batch_key, loss_key = jax.random.split(k)
      loss, grads = jax.value_and_grad(task.loss)(params, loss_key, task.batch(batch_key, "train"))
      extra = {} if task.mask is None else {"mask": task.mask}  # a padded task's active entries
      if valid_every:
        # The optimizer reads the validation loss (Metz et al. 2020), here from the task's outer-validation split.
        valid_loss = unroll.latest_valid_loss(task, params, jax.random.fold_in(k, 2), index, valid_every, valid_loss)
        extra["valid_loss"] = valid_loss
      updates, opt_state = tx.update(grads, opt_state, params, loss=loss, **extra)
      return (optax.apply_updates(params, updates), opt_state, valid_loss), task.normalize(loss)

    def measure(carry):
      params, opt_state, _ = carry
      if eval_params is not None:
        params = eval_params(opt_state, params)
      return _test_metrics(task, params, eval_key, num_eval_batches)

    carry = (params, tx.init(params), jnp.zeros([], jnp.float32))
    step_keys = (jax.random.split(data_key, num_steps), jnp.arange(num_steps))
    chunks = num_steps // eval_every if eval_every > 0 else 0
    done = chunks * eval_every
    losses, tests = [], []
    if chunks:
      def chunk(carry, keys):
        carry, chunk_losses = jax.lax.scan(step, carry, keys)
        return carry, (chunk_losses, measure(carry))

      first = measure(carry)
      chunked = jax.tree.map(lambda x: x[:done].reshape((chunks, eval_every) + x.shape[1:]), step_keys)
      carry, (chunk_losses, chunk_tests) = jax.lax.scan(chunk, carry, chunked)
      losses.append(chunk_losses.reshape(-1))
      tests = [jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, chunk_tests)]
    if done < num_steps:
      carry, rest = jax.lax.scan(step, carry, jax.tree.map(lambda x: x[done:], step_keys))
      losses.append(rest)
      tests.append(jax.tree.map(lambda a: a[None], measure(carry)))
    test_losses, test_accuracies = (jnp.concatenate(parts) for parts in zip(*tests))
    out = {"train_loss": jnp.concatenate(losses), "test_curve": test_losses, "test_loss": test_losses[-1]}
    if task.accuracy is not None:
      out["test_accuracy"] = test_accuracies[-1]
      out["test_accuracy_curve"] = test_accuracies
    return out

  def run(hparams, key):
    return jax.vmap(one_task, in_axes=(None, 0))(hparams, jax.random.split(key, num_tasks))

  return run


def to_numpy(result: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in result.items()}


def compile_trainer(family: TaskFamily, make_optimizer: ParamOptimizerFactory, *, num_tasks: int, num_steps: int,
                    eval_every: int = 0, num_eval_batches: int = 4, eval_params: EvalParams | None = None,
                    compiler_options: Mapping[str, Any] | None = None, valid_every: int = 0
                    ) -> Callable[[Any, PRNGKey], dict[str, jax.Array]]:
  """The jitted ``(hparams, key) -> results`` program of ``train_tasks``, for repeated calls with new hparams.

  ``make_optimizer(hparams, num_steps)`` builds the optimizer from a traced ``hparams`` (e.g. theta), so calls with
  new values of the same structure reuse one compile. ``compiler_options``: e.g. ``FAST_COMPILE``. ``valid_every``:
  as in ``train_tasks``.
  """
  return _jit(_program(family, make_optimizer, num_tasks=num_tasks, num_steps=num_steps, eval_every=eval_every,
                       num_eval_batches=num_eval_batches, eval_params=eval_params, valid_every=valid_every),
              compiler_options)


def train_tasks(family: TaskFamily, make_optimizer: OptimizerFactory, key: PRNGKey, *, num_tasks: int,
                num_steps: int, num_eval_batches: int = 4, eval_every: int = 0,
                eval_params: EvalParams | None = None, compiler_options: Mapping[str, Any] | None = None,
                valid_every: int = 0) -> dict[str, np.ndarray]:
  """Trains ``num_tasks`` tasks sampled from ``family`` for ``num_steps`` steps each (vmapped, one compile).

  Args:
    family: where tasks come from.
    make_optimizer: ``num_steps -> optax transformation``; its ``update`` receives ``loss=`` as a keyword.
    key: selects the tasks, their initialisations and data (the same key gives every optimizer the same tasks).
    num_tasks: tasks trained in parallel (seeds).
    num_steps: inner steps per task.
    num_eval_batches: test-split batches averaged for each test loss.
    eval_every: also measure the test loss every this many steps (see ``eval_steps``); 0 only at the end.
    eval_params: ``(opt_state, params) -> params`` evaluated on the test split (default: ``params``).
    compiler_options: XLA options for the compile, e.g. ``FAST_COMPILE``.
    valid_every: when positive, ``update`` also receives ``valid_loss=``, the loss on an outer-validation batch
      computed every this many steps (``valid_every_for`` gives the value for an architecture).

  Returns:
    ``train_loss`` (num_tasks, num_steps) normalised training losses (entry t is the loss after t updates),
    ``test_curve`` (num_tasks, len(eval_steps)) and ``test_loss`` (num_tasks,) normalised test losses and, for
    classification families, ``test_accuracy`` (num_tasks,) and ``test_accuracy_curve``.
  """
  program = _program(family, lambda _, n: make_optimizer(n), num_tasks=num_tasks, num_steps=num_steps,
                     eval_every=eval_every, num_eval_batches=num_eval_batches, eval_params=eval_params,
                     valid_every=valid_every)
  return to_numpy(_jit(program, compiler_options)(None, key))


def train_grid(family: TaskFamily, make_optimizer: ParamOptimizerFactory, hparams: np.ndarray, key: PRNGKey, *,
               num_tasks: int, num_steps: int, num_eval_batches: int = 4, eval_every: int = 0,
               eval_params: EvalParams | None = None, compiler_options: Mapping[str, Any] | None = None,
               valid_every: int = 0) -> dict[str, np.ndarray]:
  """``train_tasks`` for every value of a hyperparameter grid at once (vmapped over the grid too: one compile).

  Args:
    make_optimizer: ``(hparam, num_steps) -> optax transformation`` with ``hparam`` a traced scalar.
    hparams: the grid, shape (num_values,).
    Others: as in ``train_tasks``; every grid value trains the same tasks.

  Returns:
    The arrays of ``train_tasks`` with a leading grid axis.
  """
  program = _program(family, make_optimizer, num_tasks=num_tasks, num_steps=num_steps, eval_every=eval_every,
                     num_eval_batches=num_eval_batches, eval_params=eval_params, valid_every=valid_every)
  grid = jnp.asarray(np.asarray(hparams, np.float32))
  return to_numpy(_jit(jax.vmap(program, in_axes=(0, None)), compiler_options)(grid, key))


def stacked_optimizer(makers: Sequence[ParamOptimizerFactory], index: jax.Array, hparam: jax.Array,
                      num_steps: int) -> optax.GradientTransformationExtraArgs:
  """The ``index``-th of several optimizers, chosen by a (traceable) integer, so one program holds them all.

  Every optimizer keeps its state and computes its update; the chosen update is applied. Under ``vmap`` over
  ``index`` each lane runs a different optimizer on the same compiled program, trading a few cheap elementwise
  updates per step for one compile instead of one per optimizer (compiles dominate small evaluations on CPU).
  """
  txs = [make(hparam, num_steps) for make in makers]

  def init(params):
    return tuple(tx.init(params) for tx in txs)

  def update(updates, state, params=None, **extra_args):
    results = [tx.update(updates, s, params, **extra_args) for tx, s in zip(txs, state)]
    chosen = jax.tree.map(lambda *u: jax.lax.select_n(index, *u), *[u for u, _ in results])
    return chosen, tuple(s for _, s in results)

  return optax.GradientTransformationExtraArgs(init, update)


def _stacked_eval_params(eval_params: Sequence[EvalParams | None], index: jax.Array) -> EvalParams:
  def select(state, params):
    candidates = [params if fn is None else fn(s, params) for fn, s in zip(eval_params, state)]
    return jax.tree.map(lambda *p: jax.lax.select_n(index, *p), *candidates)

  return select


def train_stacked(family: TaskFamily, makers: Sequence[ParamOptimizerFactory], lanes: Sequence[tuple[int, float]],
                  key: PRNGKey, *, num_tasks: int, num_steps: int, num_eval_batches: int = 4, eval_every: int = 0,
                  eval_params: Sequence[EvalParams | None] | None = None,
                  compiler_options: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
  """Trains several optimizers, each possibly over a hyperparameter grid, in one compiled program.

  Args:
    makers: ``(hparam, num_steps) -> optax transformation`` per optimizer.
    lanes: ``(optimizer index, hparam)`` pairs, e.g. ``[(0, 1e-3), (0, 1e-2), (1, 0.0)]``.
    eval_params: per optimizer, ``(opt_state, params) -> params`` to evaluate, or None.
    Others: as in ``train_tasks``; every lane trains the same tasks.

  Returns:
    The arrays of ``train_tasks`` with a leading lane axis.
  """
  if not lanes or any(not 0 <= i < len(makers) for i, _ in lanes):
    raise ValueError(f"Need lanes (optimizer index, hparam) with indices below {len(makers)}, got {lanes}.")
  eval_params = list(eval_params or [None] * len(makers))
  indices = jnp.asarray([i for i, _ in lanes], jnp.int32)
  hparams = jnp.asarray([h for _, h in lanes], jnp.float32)

  def lane(index, hparam, key):
    program = _program(family, lambda _, n: stacked_optimizer(makers, index, hparam, n), num_tasks=num_tasks,
                       num_steps=num_steps, eval_every=eval_every, num_eval_batches=num_eval_batches,
                       eval_params=None if not any(eval_params) else _stacked_eval_params(eval_params, index))
    return program(None, key)

  return to_numpy(_jit(jax.vmap(lane, in_axes=(0, 0, None)), compiler_options)(indices, hparams, key))


def summarize(result: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Means over tasks of one ``train_tasks`` result: mean and final training loss, test loss (and accuracy)."""
  train = np.nan_to_num(result["train_loss"], nan=np.inf)
  summary = {"mean_train_loss": float(np.mean(train)), "final_train_loss": float(np.mean(train[:, -1])),
             "test_loss": float(np.mean(result["test_loss"]))}
  if "test_accuracy" in result:
    summary["test_accuracy"] = float(np.mean(result["test_accuracy"]))
  return summary
