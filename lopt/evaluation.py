"""Training tasks with any optax optimizer; the held-out comparison and the periodic meta-evaluation of meta-training.

Held-out tasks are drawn from a key stream that meta-training never uses (``HELDOUT_SEED_OFFSET``), and scored on
the test split, which no estimator reads.

Everything trains through one program shape: ``num_tasks`` tasks of a family (seeds), vmapped, for ``num_steps``
inner steps in a ``lax.scan``, optionally measuring the test loss every ``eval_every`` steps. ``train_tasks`` runs
one optimizer; ``train_grid`` also vmaps over a hyperparameter grid (e.g. Adam's learning rates), so a whole grid
is one compile; ``compile_trainer`` returns the jitted program for repeated calls with different meta-parameters.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.architectures.base import LearnedOptimizer
from lopt.tasks.base import Task, TaskFamily, TaskSampler
from lopt.types import MetaParams, Params, PRNGKey

HELDOUT_SEED_OFFSET = 1_000_003

OptimizerFactory = Callable[[int], optax.GradientTransformationExtraArgs]
# ``(hparams, num_steps) -> optax transformation``: hparams is a learning rate of a grid, theta, or None.
ParamOptimizerFactory = Callable[[Any, int], optax.GradientTransformationExtraArgs]
# ``(opt_state, params) -> params`` to evaluate (schedule-free optimizers evaluate an average, not the iterate).
EvalParams = Callable[[optax.OptState, Params], Params]

# XLA options that cut the CPU compile time of these small programs 3-5x (measured on 2 cores), but make steps
# slower, up to 15x for conv nets: worth it only for programs whose compile dwarfs their run (few, short runs).
FAST_COMPILE: dict[str, Any] = {"xla_backend_optimization_level": 0}


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
             eval_every: int, num_eval_batches: int,
             eval_params: EvalParams | None) -> Callable[[Any, PRNGKey], dict[str, jax.Array]]:
  """``(hparams, key) -> results`` for ``num_tasks`` tasks of ``family`` (vmapped over tasks, not jitted)."""
  if num_steps < 1 or num_tasks < 1 or num_eval_batches < 1:
    raise ValueError(f"num_steps, num_tasks and num_eval_batches must be positive, got {num_steps}, {num_tasks}, "
                     f"{num_eval_batches}.")

  def one_task(hparams, task_key):
    tx = make_optimizer(hparams, num_steps)
    cfg_key, init_key, data_key, eval_key = jax.random.split(task_key, 4)
    task = family.task(family.sample(cfg_key))
    params = task.init(init_key)

    def step(carry, k):
      params, opt_state = carry
      batch_key, loss_key = jax.random.split(k)
      loss, grads = jax.value_and_grad(task.loss)(params, loss_key, task.batch(batch_key, "train"))
      updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
      return (optax.apply_updates(params, updates), opt_state), task.normalize(loss)

    def measure(carry):
      params, opt_state = carry
      if eval_params is not None:
        params = eval_params(opt_state, params)
      return _test_metrics(task, params, eval_key, num_eval_batches)

    carry = (params, tx.init(params))
    step_keys = jax.random.split(data_key, num_steps)
    chunks = num_steps // eval_every if eval_every > 0 else 0
    done = chunks * eval_every
    losses, tests = [], []
    if chunks:
      def chunk(carry, keys):
        carry, chunk_losses = jax.lax.scan(step, carry, keys)
        return carry, (chunk_losses, measure(carry))

      first = measure(carry)
      carry, (chunk_losses, chunk_tests) = jax.lax.scan(chunk, carry, step_keys[:done].reshape(chunks, eval_every))
      losses.append(chunk_losses.reshape(-1))
      tests = [jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, chunk_tests)]
    if done < num_steps:
      carry, rest = jax.lax.scan(step, carry, step_keys[done:])
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


def _to_numpy(result: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in result.items()}


def compile_trainer(family: TaskFamily, make_optimizer: ParamOptimizerFactory, *, num_tasks: int, num_steps: int,
                    eval_every: int = 0, num_eval_batches: int = 4, eval_params: EvalParams | None = None,
                    compiler_options: Mapping[str, Any] | None = None
                    ) -> Callable[[Any, PRNGKey], dict[str, jax.Array]]:
  """The jitted ``(hparams, key) -> results`` program of ``train_tasks``, for repeated calls with new hparams.

  ``make_optimizer(hparams, num_steps)`` builds the optimizer from a traced ``hparams`` (e.g. theta), so calls with
  new values of the same structure reuse one compile. ``compiler_options``: e.g. ``FAST_COMPILE``.
  """
  return _jit(_program(family, make_optimizer, num_tasks=num_tasks, num_steps=num_steps, eval_every=eval_every,
                       num_eval_batches=num_eval_batches, eval_params=eval_params), compiler_options)


def train_tasks(family: TaskFamily, make_optimizer: OptimizerFactory, key: PRNGKey, *, num_tasks: int,
                num_steps: int, num_eval_batches: int = 4, eval_every: int = 0,
                eval_params: EvalParams | None = None,
                compiler_options: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
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

  Returns:
    ``train_loss`` (num_tasks, num_steps) normalised training losses (entry t is the loss after t updates),
    ``test_curve`` (num_tasks, len(eval_steps)) and ``test_loss`` (num_tasks,) normalised test losses and, for
    classification families, ``test_accuracy`` (num_tasks,) and ``test_accuracy_curve``.
  """
  program = _program(family, lambda _, n: make_optimizer(n), num_tasks=num_tasks, num_steps=num_steps,
                     eval_every=eval_every, num_eval_batches=num_eval_batches, eval_params=eval_params)
  return _to_numpy(_jit(program, compiler_options)(None, key))


def train_grid(family: TaskFamily, make_optimizer: ParamOptimizerFactory, hparams: np.ndarray, key: PRNGKey, *,
               num_tasks: int, num_steps: int, num_eval_batches: int = 4, eval_every: int = 0,
               eval_params: EvalParams | None = None,
               compiler_options: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
  """``train_tasks`` for every value of a hyperparameter grid at once (vmapped over the grid too: one compile).

  Args:
    make_optimizer: ``(hparam, num_steps) -> optax transformation`` with ``hparam`` a traced scalar.
    hparams: the grid, shape (num_values,).
    Others: as in ``train_tasks``; every grid value trains the same tasks.

  Returns:
    The arrays of ``train_tasks`` with a leading grid axis.
  """
  program = _program(family, make_optimizer, num_tasks=num_tasks, num_steps=num_steps, eval_every=eval_every,
                     num_eval_batches=num_eval_batches, eval_params=eval_params)
  grid = jnp.asarray(np.asarray(hparams, np.float32))
  return _to_numpy(_jit(jax.vmap(program, in_axes=(0, None)), compiler_options)(grid, key))


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

  return _to_numpy(_jit(jax.vmap(lane, in_axes=(0, 0, None)), compiler_options)(indices, hparams, key))


def _summary(result: Mapping[str, np.ndarray]) -> dict[str, float]:
  train = np.nan_to_num(result["train_loss"], nan=np.inf)
  summary = {"mean_train_loss": float(np.mean(train)), "final_train_loss": float(np.mean(train[:, -1])),
             "test_loss": float(np.mean(result["test_loss"]))}
  if "test_accuracy" in result:
    summary["test_accuracy"] = float(np.mean(result["test_accuracy"]))
  return summary


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
  """A markdown table with one row per optimizer."""
  columns = list(next(iter(rows.values())))
  lines = ["| optimizer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  for name, row in rows.items():
    lines.append(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + " |")
  return "\n".join(lines)


def heldout_comparison(*, theta: MetaParams, init_theta: MetaParams, architecture: LearnedOptimizer,
                       task_sampler: TaskSampler, workdir: str | None = None, seed: int = 0, num_tasks: int = 8,
                       num_steps: int = 200, adam_learning_rate: float = 1e-3) -> dict[str, dict[str, float]]:
  """Compares the meta-trained optimizer, its initialisation and Adam on held-out tasks of every family.

  Prints a markdown table (lower losses are better) and writes ``workdir/final_evaluation.json``.

  Returns:
    ``{family name: {optimizer name: summary}}``.
  """
  optimizers: dict[str, OptimizerFactory] = {
      "meta-trained": lambda n: architecture.optimizer(theta, num_steps=n),
      "initialisation": lambda n: architecture.optimizer(init_theta, num_steps=n),
      f"adam({adam_learning_rate:g})": lambda n: optax.with_extra_args_support(optax.adam(adam_learning_rate)),
  }
  key = jax.random.key(seed + HELDOUT_SEED_OFFSET)
  report = {}
  for i, family in enumerate(task_sampler.families):
    family_key = jax.random.fold_in(key, i)
    rows = {name: _summary(train_tasks(family, make, family_key, num_tasks=num_tasks, num_steps=num_steps))
            for name, make in optimizers.items()}
    report[family.name] = rows
    table = format_table(rows)
    header = f"Held-out comparison on {family.name}: {num_tasks} tasks x {num_steps} steps (normalised losses)"
    print(f"\n{header}\n{table}\n", flush=True)
  if workdir is not None:
    with open(os.path.join(workdir, "final_evaluation.json"), "w") as f:
      json.dump(report, f, indent=2)
  return report


MetaEvalFn = Callable[..., dict[str, float]]


def periodic_meta_eval(*, num_tasks: int = 4, num_steps: int = 100, seed: int = 0, eval_every: int = 0,
                       compare_adam: bool = True, adam_learning_rate: float = 1e-3,
                       fast_compile: bool = False) -> MetaEvalFn:
  """Builds the ``meta_eval`` function of ``meta_train``: held-out tasks of every family trained with the current
  theta, scored on the test split.

  The tasks (``num_tasks`` per family, from the ``HELDOUT_SEED_OFFSET`` key stream of ``seed``) are the same at
  every call, so the logged values trace one fixed benchmark over meta-training. Each family's program is compiled
  once and reused with each new theta; Adam's scores, which do not change, are computed once.

  Args:
    num_tasks: held-out tasks per family.
    num_steps: inner steps per task (the ``num_steps`` the learned optimizer is told).
    seed: selects the held-out tasks.
    eval_every: when positive, also report ``mean_test_loss``, the test loss averaged over measurements every
      ``eval_every`` steps (an area under the test curve).
    compare_adam: also report the ratio of the final training loss to ``optax.adam(adam_learning_rate)``'s.
    adam_learning_rate: Adam's step for that ratio.
    fast_compile: compile with ``FAST_COMPILE`` (faster compiles on CPU, slower steps; see there).

  Returns:
    ``fn(*, theta, step, architecture, task_sampler) -> {name: float}`` with, per family ``f``,
    ``f/mean_train_loss``, ``f/final_train_loss``, ``f/test_loss`` (normalised), ``f/test_accuracy`` for
    classifiers, ``f/final_train_loss_vs_adam`` (below 1: better than Adam), and the same averaged over families
    under ``mean/``.
  """
  if num_tasks < 1 or num_steps < 1:
    raise ValueError(f"num_tasks and num_steps must be positive, got {num_tasks} and {num_steps}.")
  options = FAST_COMPILE if fast_compile else None
  programs: dict[tuple[str, str], Callable[[Any, PRNGKey], dict[str, jax.Array]]] = {}
  adam_final: dict[str, float] = {}
  base_key = jax.random.key(seed + HELDOUT_SEED_OFFSET)

  def scores(result: Mapping[str, np.ndarray]) -> dict[str, float]:
    out = _summary(result)
    if eval_every:
      out["mean_test_loss"] = float(np.mean(np.nan_to_num(result["test_curve"], nan=np.inf)))
    return out

  def evaluate(*, theta: MetaParams, step: int, architecture: LearnedOptimizer,
               task_sampler: TaskSampler) -> dict[str, float]:
    del step  # The same tasks at every step.
    out: dict[str, float] = {}
    per_family = []
    for i, family in enumerate(task_sampler.families):
      key = jax.random.fold_in(base_key, i)
      common = dict(num_tasks=num_tasks, num_steps=num_steps, eval_every=eval_every, compiler_options=options)
      cache_key = (architecture.name, family.name)
      if cache_key not in programs:
        programs[cache_key] = compile_trainer(
            family, lambda th, n: architecture.optimizer(th, num_steps=n), **common)
      family_scores = scores(_to_numpy(programs[cache_key](theta, key)))
      if compare_adam:
        if family.name not in adam_final:
          adam = lambda n: optax.with_extra_args_support(optax.adam(adam_learning_rate))
          adam_final[family.name] = _summary(train_tasks(family, adam, key, **common))["final_train_loss"]
        family_scores["final_train_loss_vs_adam"] = family_scores["final_train_loss"] / adam_final[family.name]
      per_family.append(family_scores)
      out.update({f"{family.name}/{k}": v for k, v in family_scores.items()})
    for name in per_family[0]:
      values = [s[name] for s in per_family if name in s]
      out[f"mean/{name}"] = float(np.mean(values))
    return out

  return evaluate
