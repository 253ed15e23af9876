"""Scoring a learned optimizer against tuned baselines on a suite of tasks, VeLO-style.

``evaluate_suite`` trains every task of a suite with the learned optimizer and with each baseline (tuned ones over
their learning-rate grid in one compile), on the same held-out tasks and seeds, and returns a JSON-ready report:
per task and optimizer the mean training and test curves, the final losses, the tuned learning rate, and the
speed-up over tuned Adam (``speedup``). ``report`` turns it into JSON, markdown and figures.

Final losses compare equal budgets: every optimizer is scored after the learned optimizer's ``num_steps``. The
baselines may train longer (``baseline_steps_factor``) so that speed-ups above 1 can be measured.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from lopt.evaluation import speedup, training, tuned_baselines
from lopt.evaluation.report import json_floats, json_ready
from lopt.evaluation.tuned_baselines import Baseline
from lopt.progress import Progress
from lopt.tasks.base import TaskFamily

REPORT_JSON = "training.json"
REPORT_MARKDOWN = "training.md"
SPEEDUP_BASELINE = "adam"


def _std(x: np.ndarray) -> np.ndarray:
  with np.errstate(invalid="ignore"):  # inf - inf in a diverged seed: the spread is undefined, stored as null
    return np.std(x, axis=0)


def _record(result: Mapping[str, np.ndarray], *, num_steps: int, window: int, eval_steps: list[int],
            index: int | None = None) -> dict[str, Any]:
  """One optimizer on one task: curves (means over seeds) and the scores after ``num_steps`` steps."""
  pick = (lambda a: a) if index is None else (lambda a: a[index])
  train = speedup.clean(pick(result["train_loss"]))  # (seeds, steps)
  test = speedup.clean(pick(result["test_curve"]))  # (seeds, points)
  train_mean = np.mean(train, axis=0)
  at = eval_steps.index(num_steps)
  record = {
      "final_train_loss": float(speedup.smooth(train_mean[:num_steps], window)[-1]),
      "test_loss": float(np.mean(test[:, at])),
      "train_curve": json_floats(train_mean),
      "train_curve_std": json_floats(_std(train)),
      "test_curve": json_floats(np.mean(test, axis=0)),
      "eval_steps": eval_steps,
  }
  if "test_accuracy_curve" in result:
    record["test_accuracy"] = float(np.mean(pick(result["test_accuracy_curve"])[:, at]))
  return record


def evaluate_suite(suite: Mapping[str, TaskFamily], *, baselines: Sequence[Baseline],
                   learned: training.OptimizerFactory | None = None, learned_name: str = "learned",
                   learned_valid_every: int = 0,
                   num_steps: int = 200, num_seeds: int = 4, seed: int = 0, baseline_steps_factor: int = 1,
                   eval_every: int | None = None, window: int | None = None,
                   compiler_options: Mapping[str, Any] | None = None,
                   printer: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains every task of ``suite`` with the learned optimizer and every baseline; returns the report.

  Args:
    suite: ``{task name: family}``; tasks are drawn from the held-out key stream of ``seed``.
    baselines: e.g. ``lopt.eval_baselines.default_baselines()``; the speed-up needs one named ``"adam"``.
    learned: ``num_steps -> optax transformation`` of the learned optimizer; None evaluates baselines only.
    learned_name: its display name.
    learned_valid_every: feed the learned optimizer ``valid_loss=`` every this many steps (from each task's
      outer-validation split); ``training.valid_every_for(architecture)`` gives the value for an architecture.
    num_steps: the learned optimizer's inner steps per task.
    num_seeds: tasks (seeds) per family; every optimizer trains the same ones.
    seed: selects the tasks.
    baseline_steps_factor: baselines train this many times longer, so speed-ups up to it can be measured.
    eval_every: steps between test-loss measurements; must divide ``num_steps`` (default ``num_steps // 10``).
    window: smoothing window of the training curves (default ``lopt.speedup.default_window(num_steps)``).
    compiler_options: XLA compile options, e.g. ``lopt.training.FAST_COMPILE``.
    printer: receives a line when each compiled program (the learned optimizer; all baselines of a task)
      starts and one with the count done and the ETA when it ends.

  Returns:
    The report (see ``docs/training.md``), strict-JSON-ready: non-finite values (divergence) are None.
  """
  eval_every = eval_every or max(1, num_steps // 10)
  if num_steps < 2 or num_steps % eval_every or baseline_steps_factor < 1 or not suite:
    raise ValueError(f"Need num_steps >= 2 divisible by eval_every, baseline_steps_factor >= 1 and a non-empty "
                     f"suite; got num_steps={num_steps}, eval_every={eval_every}, "
                     f"baseline_steps_factor={baseline_steps_factor}, {len(suite)} tasks.")
  window = window or speedup.default_window(num_steps)
  baseline_steps = num_steps * baseline_steps_factor
  names = [b.name for b in baselines]
  if len(set(names)) != len(names) or learned_name in names:
    raise ValueError(f"Optimizer names must be distinct; got {learned_name!r} and baselines {names}.")
  # Every baseline and every grid value is one lane of a single compiled program (see train_stacked).
  lanes = [(i, lr) for i, b in enumerate(baselines) for lr in (b.learning_rates or (0.0,))]
  # The ETA weighs each program by its inner steps: one baseline program trains len(lanes) optimizers
  # baseline_steps_factor times longer than the learned optimizer's, so counting programs would understate it.
  learned_work, baseline_work = num_steps, baseline_steps * len(lanes)
  progress = Progress(len(suite) * (1 + (learned is not None)), unit="programs", printer=printer,
                      total_work=len(suite) * (baseline_work + learned_work * (learned is not None)))
  common = dict(num_tasks=num_seeds, eval_every=eval_every, compiler_options=compiler_options)
  key = jax.random.key(seed + training.HELDOUT_SEED_OFFSET)
  tasks: dict[str, Any] = {}
  speedups: list[speedup.SpeedUp] = []
  start = time.perf_counter()
  for task_index, (task_name, family) in enumerate(suite.items()):
    task_key = jax.random.fold_in(key, task_index)
    optimizers: dict[str, Any] = {}
    grids: dict[str, np.ndarray] = {}
    if learned is not None:
      progress.starting(f"{task_name}: {learned_name}, {num_seeds} seeds x {num_steps} steps")
      result = training.train_tasks(family, learned, task_key, num_steps=num_steps, valid_every=learned_valid_every,
                                    **common)
      optimizers[learned_name] = _record(result, num_steps=num_steps, window=window,
                                         eval_steps=training.eval_steps(num_steps, eval_every))
      progress.step(f"{task_name}: {learned_name}", work=learned_work)
    points = training.eval_steps(baseline_steps, eval_every)
    baselines_what = f"{task_name}: {len(baselines)} baselines ({len(lanes)} runs x {num_seeds} seeds)"
    progress.starting(f"{baselines_what} x {baseline_steps} steps")
    # A scheduled baseline decays over the scored horizon (num_steps), not the longer baseline budget.
    makers = [(lambda lr, n, b=b: b.make(lr, num_steps)) if b.scheduled else b.make for b in baselines]
    result = training.train_stacked(family, makers, lanes, task_key,
                                      num_steps=baseline_steps, eval_params=[b.eval_params for b in baselines],
                                      **common)
    first_lane = 0
    for baseline in baselines:
      rows = np.arange(first_lane, first_lane + max(1, len(baseline.learning_rates)))
      first_lane = rows[-1] + 1
      lanes_result = {k: v[rows] for k, v in result.items()}
      curves = np.mean(speedup.clean(lanes_result["train_loss"]), axis=1)  # (grid, steps)
      best = speedup.best_final(curves, window=window, at=num_steps - 1)
      record = _record(lanes_result, num_steps=num_steps, window=window, eval_steps=points, index=best)
      if baseline.tuned:
        grids[baseline.name] = curves
        record["learning_rate"] = baseline.learning_rates[best]
        record["edge"] = tuned_baselines.edge_hit(baseline.learning_rates, baseline.learning_rates[best])
        record["grid"] = {f"{lr:g}": float(speedup.smooth(c[:num_steps], window)[-1])
                          for lr, c in zip(baseline.learning_rates, curves)}
      optimizers[baseline.name] = record
    progress.step(baselines_what, work=baseline_work)
    entry: dict[str, Any] = {"family": family.name, "optimizers": optimizers}
    if learned is not None and SPEEDUP_BASELINE in grids:
      learned_curve = np.asarray([np.inf if v is None else v for v in optimizers[learned_name]["train_curve"]])
      result_speedup = speedup.speedup(learned_curve, grids[SPEEDUP_BASELINE], window=window)
      speedups.append(result_speedup)
      entry["speedup"] = dict(vars(result_speedup), label=result_speedup.label())
      if result_speedup.baseline_index is not None:
        entry["speedup"]["learning_rate"] = baselines[names.index(SPEEDUP_BASELINE)].learning_rates[
            result_speedup.baseline_index]
    tasks[task_name] = entry
  report: dict[str, Any] = {
      "learned": learned_name if learned is not None else None,
      "baselines": {b.name: list(b.learning_rates) for b in baselines},
      "num_steps": num_steps, "baseline_steps": baseline_steps, "num_seeds": num_seeds, "seed": seed,
      "eval_every": eval_every, "smoothing_window": window, "tasks": tasks,
      "seconds": time.perf_counter() - start,
  }
  if speedups:
    report["speedup_summary"] = speedup.summarize(speedups)
  report["edge_hits"] = {name: sorted(t for t, entry in tasks.items() if entry["optimizers"][name].get("edge"))
                         for name in names if baselines[names.index(name)].tuned}
  return json_ready(report)
