"""The two evaluation hooks of ``meta_train``: the final held-out comparison and the periodic meta-evaluation.

Both train held-out tasks of every family of the run's sampler (drawn from the key stream meta-training never uses,
``training.HELDOUT_SEED_OFFSET``) and score them on the test split, which no estimator reads. ``meta_train`` calls
``final_evaluation`` once at the end and ``meta_eval`` every ``meta_eval_every`` outer steps.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

import jax
import numpy as np
import optax

from lopt.architectures.base import LearnedOptimizer
from lopt.evaluation import suites
from lopt.evaluation.training import (FAST_COMPILE, HELDOUT_SEED_OFFSET, OptimizerFactory, compile_trainer,
                                      summarize, to_numpy, train_tasks, valid_every_for)
from lopt.progress import Progress
from lopt.tasks.base import TaskSampler
from lopt.types import MetaParams, PRNGKey
from lopt.workdir import Workdir


def _print_flushed(line: str) -> None:
  print(line, flush=True)


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

  Prints a markdown table (lower losses are better) and writes the workdir's ``final_evaluation.json``.

  Returns:
    ``{family name: {optimizer name: summary}}``.
  """
  learned_valid = valid_every_for(architecture)
  optimizers: dict[str, tuple[OptimizerFactory, int]] = {
      "meta-trained": (lambda n: architecture.optimizer(theta, num_steps=n), learned_valid),
      "initialisation": (lambda n: architecture.optimizer(init_theta, num_steps=n), learned_valid),
      f"adam({adam_learning_rate:g})": (lambda n: optax.with_extra_args_support(optax.adam(adam_learning_rate)), 0),
  }
  key = jax.random.key(seed + HELDOUT_SEED_OFFSET)
  report = {}
  # Each (family, optimizer) pair compiles and trains a program of its own: say which, and how long is left.
  tracker = Progress(len(task_sampler.families) * len(optimizers), unit="runs", printer=_print_flushed)
  for i, family in enumerate(task_sampler.families):
    family_key = jax.random.fold_in(key, i)
    rows = {}
    for name, (make, valid) in optimizers.items():
      what = f"held-out {family.name}: {name}, {num_tasks} tasks x {num_steps} steps"
      tracker.starting(what)
      rows[name] = summarize(train_tasks(family, make, family_key, num_tasks=num_tasks, num_steps=num_steps,
                                         valid_every=valid))
      tracker.step(what)
    report[family.name] = rows
    table = format_table(rows)
    header = f"Held-out comparison on {family.name}: {num_tasks} tasks x {num_steps} steps (normalised losses)"
    print(f"\n{header}\n{table}\n", flush=True)
  if workdir is not None:
    with open(Workdir(workdir).final_evaluation, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  return report


MetaEvalFn = Callable[..., dict[str, float]]


def periodic_meta_eval(*, num_tasks: int = 4, num_steps: int = 100, seed: int = 0, eval_every: int = 0,
                       compare_adam: bool = True, adam_learning_rate: float = 1e-3,
                       fast_compile: bool = False, suite: str | None = None) -> MetaEvalFn:
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
    suite: a registered ``eval_suite`` (e.g. ``"validation"``) to evaluate on instead of the sampler's families:
      ranking thetas on tasks the run never trains on selects for generalisation rather than fit.

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
  suite_families = None if suite is None else suites.get_suite(suite)

  def scores(result: Mapping[str, np.ndarray]) -> dict[str, float]:
    out = summarize(result)
    if eval_every:
      out["mean_test_loss"] = float(np.mean(np.nan_to_num(result["test_curve"], nan=np.inf)))
    return out

  def evaluate(*, theta: MetaParams, step: int, architecture: LearnedOptimizer,
               task_sampler: TaskSampler) -> dict[str, float]:
    del step  # The same tasks at every step.
    out: dict[str, float] = {}
    per_family = []
    families = suite_families or {family.name: family for family in task_sampler.families}
    for i, (name, family) in enumerate(families.items()):
      key = jax.random.fold_in(base_key, i)
      common = dict(num_tasks=num_tasks, num_steps=num_steps, eval_every=eval_every, compiler_options=options)
      cache_key = (architecture.name, family.name)
      if cache_key not in programs:
        programs[cache_key] = compile_trainer(
            family, lambda th, n: architecture.optimizer(th, num_steps=n), valid_every=valid_every_for(architecture),
            **common)
      family_scores = scores(to_numpy(programs[cache_key](theta, key)))
      if compare_adam:
        if family.name not in adam_final:
          adam = lambda n: optax.with_extra_args_support(optax.adam(adam_learning_rate))
          adam_final[family.name] = summarize(train_tasks(family, adam, key, **common))["final_train_loss"]
        family_scores["final_train_loss_vs_adam"] = family_scores["final_train_loss"] / adam_final[family.name]
      per_family.append(family_scores)
      out.update({f"{name}/{k}": v for k, v in family_scores.items()})
    for name in per_family[0]:
      values = [s[name] for s in per_family if name in s]
      out[f"mean/{name}"] = float(np.mean(values))
    return out

  return evaluate
