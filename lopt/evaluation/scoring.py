"""Scoring a learned optimizer against tuned baselines on a suite of tasks, VeLO-style.

``evaluate_suite`` trains every task of a suite with the learned optimizer and with each baseline (tuned ones over
their learning-rate grid in one compile), on the same held-out tasks and seeds, and returns a JSON-ready report:
per task and optimizer the mean training and test curves, the final losses, the tuned learning rate, and the
speed-up over tuned Adam (``speedup``). ``report`` turns it into JSON, markdown and figures.

Final losses compare equal budgets: every optimizer is scored after the learned optimizer's ``num_steps``. The
baselines may train longer (``baseline_steps_factor``) so that speed-ups above 1 can be measured.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import optax

from lopt import registry
from lopt.evaluation import baseline_cache as bc
from lopt.evaluation import headline as headline_lib
from lopt.evaluation import speedup, training, tuned_baselines
from lopt.evaluation.report import json_floats, json_ready
from lopt.evaluation.tuned_baselines import Baseline
from lopt.progress import Progress
from lopt.tasks.base import TaskFamily

REPORT_JSON = "training.json"
REPORT_MARKDOWN = "training.md"
SPEEDUP_BASELINE = "adam"
PROTOCOLS = headline_lib.PROTOCOLS
# The tuned protocol's multipliers of the learned update: half-decades like Adam's learning-rate grid
# (tuned_baselines.ADAM_LEARNING_RATES), centred on 1.0 (the optimizer as shipped), two decades each way.
MULTIPLIERS: tuple[float, ...] = (1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, 30.0, 100.0)


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


def check_protocols(protocols: Sequence[str]) -> tuple[str, ...]:
  """``protocols`` as a tuple if each is one of ``PROTOCOLS`` (an unknown one names the closest), and not empty."""
  if isinstance(protocols, str) or not protocols:
    raise ValueError(f"protocols must be a non-empty list of {', '.join(PROTOCOLS)}; got {protocols!r}.")
  for p in protocols:
    if p not in PROTOCOLS:
      near = registry.closest(str(p), list(PROTOCOLS))
      raise ValueError(f"Unknown protocol {p!r}; known: {', '.join(PROTOCOLS)}."
                       + (f" Did you mean {near!r}?" if near else ""))
  return tuple(protocols)


def tuned_name(learned_name: str) -> str:
  """The report's name of the learned optimizer under the ``tuned`` protocol."""
  return f"{learned_name} tuned"


def _scaled(learned: training.OptimizerFactory) -> training.ParamOptimizerFactory:
  """``(multiplier, num_steps) -> learned update x multiplier``: the optimizer of the ``tuned`` protocol."""
  return lambda multiplier, n: optax.chain(learned(n), optax.with_extra_args_support(optax.scale(multiplier)))


def _tuned_record(result: Mapping[str, np.ndarray], values: Sequence[float], *, num_steps: int, window: int,
                  eval_steps: list[int], field: str) -> dict[str, Any]:
  """The best lane of a grid (lowest smoothed final training loss at ``num_steps``), its grid and edge flag."""
  curves = np.mean(speedup.clean(result["train_loss"]), axis=1)  # (grid, steps)
  best = speedup.best_final(curves, window=window, at=num_steps - 1)
  record = _record(result, num_steps=num_steps, window=window, eval_steps=eval_steps, index=best)
  record[field] = values[best]
  record["edge"] = tuned_baselines.edge_hit(values, values[best])
  record["grid"] = {f"{v:g}": float(speedup.smooth(c[:num_steps], window)[-1]) for v, c in zip(values, curves)}
  return record


def _speedup_entry(curve: list[float | None], adam_grid: np.ndarray, adam_rates: Sequence[float],
                   window: int) -> tuple[speedup.SpeedUp, dict[str, Any]]:
  learned_curve = np.asarray([np.inf if v is None else v for v in curve])
  result = speedup.speedup(learned_curve, adam_grid, window=window)
  entry = dict(vars(result), label=result.label())
  if result.baseline_index is not None:
    entry["learning_rate"] = adam_rates[result.baseline_index]
  return result, entry


def _lanes(baselines: Sequence[Baseline]) -> list[tuple[int, float]]:
  return [(i, lr) for i, b in enumerate(baselines) for lr in (b.learning_rates or (0.0,))]


def _train_baselines(family: TaskFamily, baselines: Sequence[Baseline], task_key: jax.Array, *, num_steps: int,
                     baseline_steps: int, common: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
  """Every baseline and grid value as one lane of a single compiled program; the arrays split per baseline."""
  # A scheduled baseline decays over the scored horizon (num_steps), not the longer baseline budget.
  makers = [(lambda lr, n, b=b: b.make(lr, num_steps)) if b.scheduled else b.make for b in baselines]
  result = training.train_stacked(family, makers, _lanes(baselines), task_key, num_steps=baseline_steps,
                                  eval_params=[b.eval_params for b in baselines], **common)
  out, first = {}, 0
  for b in baselines:
    rows = max(1, len(b.learning_rates))
    out[b.name] = {k: v[first:first + rows] for k, v in result.items()}
    first += rows
  return out


def evaluate_suite(suite: Mapping[str, TaskFamily], *, baselines: Sequence[Baseline],
                   learned: training.OptimizerFactory | None = None, learned_name: str = "learned",
                   learned_valid_every: int = 0, protocols: Sequence[str] = PROTOCOLS,
                   multipliers: Sequence[float] = MULTIPLIERS,
                   num_steps: int = 200, num_seeds: int = 4, seed: int = 0, baseline_steps_factor: int = 1,
                   eval_every: int | None = None, window: int | None = None,
                   compiler_options: Mapping[str, Any] | None = None, baseline_cache: str | None = None,
                   printer: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains every task of ``suite`` with the learned optimizer and every baseline; returns the report.

  Args:
    suite: ``{task name: family}``; tasks are drawn from the held-out key stream of ``seed``.
    baselines: e.g. ``lopt.eval_baselines.default_baselines()``; the speed-up needs one named ``"adam"``.
    learned: ``num_steps -> optax transformation`` of the learned optimizer; None evaluates baselines only.
    learned_name: its display name (under the ``tuned`` protocol ``tuned_name(learned_name)``).
    learned_valid_every: feed the learned optimizer ``valid_loss=`` every this many steps (from each task's
      outer-validation split); ``training.valid_every_for(architecture)`` gives the value for an architecture.
    protocols: ``hparam_free`` (the learned optimizer as given) and/or ``tuned`` (its update times the per-task
      best of ``multipliers``, chosen like a baseline's learning rate; all values train in one compile and the
      ``hparam_free`` result is then the grid's 1.0 lane).
    multipliers: the ``tuned`` protocol's grid; must contain 1.0.
    num_steps: the learned optimizer's inner steps per task.
    num_seeds: tasks (seeds) per family; every optimizer trains the same ones.
    seed: selects the tasks.
    baseline_steps_factor: baselines train this many times longer, so speed-ups up to it can be measured.
    eval_every: steps between test-loss measurements; must divide ``num_steps`` (default ``num_steps // 10``).
    window: smoothing window of the training curves (default ``lopt.speedup.default_window(num_steps)``).
    compiler_options: XLA compile options, e.g. ``lopt.training.FAST_COMPILE``.
    baseline_cache: a directory of cached baseline results (``baseline_cache``), or None to train them all.
    printer: receives a line when each compiled program (the learned optimizer; the baselines of a task that the
      cache lacks) starts and one with the count done and the ETA when it ends; and a line per corrupt cache file.

  Returns:
    The report (see ``docs/evaluation.md``), strict-JSON-ready: non-finite values (divergence) are None. Its
    ``headline`` holds ``headline.headline`` per protocol; ``seconds_learned`` and ``seconds_baselines`` the wall
    time of each part.
  """
  eval_every = eval_every or max(1, num_steps // 10)
  if num_steps < 2 or num_steps % eval_every or baseline_steps_factor < 1 or not suite:
    raise ValueError(f"Need num_steps >= 2 divisible by eval_every, baseline_steps_factor >= 1 and a non-empty "
                     f"suite; got num_steps={num_steps}, eval_every={eval_every}, "
                     f"baseline_steps_factor={baseline_steps_factor}, {len(suite)} tasks.")
  check_protocols(protocols)
  multipliers = tuple(float(m) for m in multipliers)
  if "tuned" in protocols and 1.0 not in multipliers:
    raise ValueError(f"multipliers must contain 1.0 (the optimizer as given), got {list(multipliers)}.")
  window = window or speedup.default_window(num_steps)
  baseline_steps = num_steps * baseline_steps_factor
  names = [b.name for b in baselines]
  learned_names = ([learned_name] + ([tuned_name(learned_name)] if "tuned" in protocols else [])
                   if learned is not None else [])
  if len(set(names + learned_names)) != len(names) + len(learned_names):
    raise ValueError(f"Optimizer names must be distinct; got {learned_names} and baselines {names}.")
  cache = bc.BaselineCache(baseline_cache, printer=printer) if baseline_cache else None
  common = dict(num_tasks=num_seeds, eval_every=eval_every, compiler_options=compiler_options)
  keys = {t: {b.name: bc.entry_key(task_name=t, family_name=family.name, task_index=i, seed=seed,
                                   num_seeds=num_seeds, num_steps=num_steps, baseline_steps=baseline_steps,
                                   eval_every=eval_every, baseline=b, compiler_options=compiler_options)
              for b in baselines}
          for i, (t, family) in enumerate(suite.items())}
  # Plan the progress count from the files present: a fully cached task runs no baseline program.
  to_train = {t: [b for b in baselines if cache is None or not os.path.exists(cache.path(keys[t][b.name]))]
              for t in suite}
  tuned = learned is not None and "tuned" in protocols
  learned_lanes = len(multipliers) if tuned else 1
  learned_work = num_steps * learned_lanes
  baseline_work = {t: baseline_steps * len(_lanes(bs)) for t, bs in to_train.items()}
  progress = Progress(len(suite) * (learned is not None) + sum(bool(bs) for bs in to_train.values()),
                      unit="programs", printer=printer,
                      total_work=len(suite) * learned_work * (learned is not None) + sum(baseline_work.values()))
  key = jax.random.key(seed + training.HELDOUT_SEED_OFFSET)
  tasks: dict[str, Any] = {}
  speedups: dict[str, list[speedup.SpeedUp]] = {"speedup": [], "speedup_tuned": []}
  seconds = {"learned": 0.0, "baselines": 0.0}
  start = time.perf_counter()
  for task_index, (task_name, family) in enumerate(suite.items()):
    task_key = jax.random.fold_in(key, task_index)
    optimizers: dict[str, Any] = {}
    entry: dict[str, Any] = {"family": family.name, "optimizers": optimizers}
    if learned is not None:
      began = time.perf_counter()
      points = training.eval_steps(num_steps, eval_every)
      what = f"{task_name}: {learned_name}" + (f" x {len(multipliers)} multipliers" if tuned else "")
      progress.starting(f"{what}, {num_seeds} seeds x {num_steps} steps")
      if tuned:
        result = training.train_grid(family, _scaled(learned), np.asarray(multipliers), task_key,
                                     num_steps=num_steps, valid_every=learned_valid_every, **common)
        if "hparam_free" in protocols:
          optimizers[learned_name] = _record(result, num_steps=num_steps, window=window, eval_steps=points,
                                             index=multipliers.index(1.0))
        optimizers[tuned_name(learned_name)] = _tuned_record(result, multipliers, num_steps=num_steps, window=window,
                                                             eval_steps=points, field="multiplier")
      else:
        result = training.train_tasks(family, learned, task_key, num_steps=num_steps,
                                      valid_every=learned_valid_every, **common)
        optimizers[learned_name] = _record(result, num_steps=num_steps, window=window, eval_steps=points)
      progress.step(what, work=learned_work)
      seconds["learned"] += time.perf_counter() - began
    began = time.perf_counter()
    results = {}
    for b in baselines:
      arrays = cache.load(keys[task_name][b.name]) if cache else None
      if arrays is not None:
        results[b.name] = arrays
    missing = [b for b in baselines if b.name not in results]
    if missing:
      what = f"{task_name}: {len(missing)} baselines ({len(_lanes(missing))} runs x {num_seeds} seeds)"
      progress.starting(f"{what} x {baseline_steps} steps")
      trained = _train_baselines(family, missing, task_key, num_steps=num_steps, baseline_steps=baseline_steps,
                                 common=common)
      for b in missing:
        if cache:
          cache.store(keys[task_name][b.name], trained[b.name])
      results.update(trained)
      if to_train[task_name]:
        progress.step(what, work=baseline_work[task_name])
    points = training.eval_steps(baseline_steps, eval_every)
    grids: dict[str, np.ndarray] = {}
    for baseline in baselines:
      if baseline.tuned:
        record = _tuned_record(results[baseline.name], baseline.learning_rates, num_steps=num_steps, window=window,
                               eval_steps=points, field="learning_rate")
        grids[baseline.name] = np.mean(speedup.clean(results[baseline.name]["train_loss"]), axis=1)
      else:
        record = _record(results[baseline.name], num_steps=num_steps, window=window, eval_steps=points, index=0)
      optimizers[baseline.name] = record
    seconds["baselines"] += time.perf_counter() - began
    if SPEEDUP_BASELINE in grids:
      rates = baselines[names.index(SPEEDUP_BASELINE)].learning_rates
      for field, name in zip(("speedup", "speedup_tuned"), learned_names):
        if name in optimizers:
          result_speedup, entry[field] = _speedup_entry(optimizers[name]["train_curve"], grids[SPEEDUP_BASELINE],
                                                        rates, window)
          speedups[field].append(result_speedup)
    tasks[task_name] = entry
  report: dict[str, Any] = {
      "learned": learned_name if learned is not None and "hparam_free" in protocols else None,
      "learned_tuned": tuned_name(learned_name) if tuned else None,
      "protocols": list(protocols) if learned is not None else [],
      "multipliers": list(multipliers) if tuned else [],
      "baselines": {b.name: list(b.learning_rates) for b in baselines},
      "num_steps": num_steps, "baseline_steps": baseline_steps, "num_seeds": num_seeds, "seed": seed,
      "eval_every": eval_every, "smoothing_window": window, "tasks": tasks,
      "seconds": time.perf_counter() - start, "seconds_learned": seconds["learned"],
      "seconds_baselines": seconds["baselines"],
      "baseline_cache": ({"directory": cache.directory, "hits": cache.hits, "misses": cache.misses}
                         if cache else None),
  }
  if speedups["speedup"]:
    report["speedup_summary"] = speedup.summarize(speedups["speedup"])
  if speedups["speedup_tuned"]:
    report["speedup_summary_tuned"] = speedup.summarize(speedups["speedup_tuned"])
  gridded = [b.name for b in baselines if b.tuned] + learned_names[1:]
  report["edge_hits"] = {name: sorted(t for t, entry in tasks.items() if entry["optimizers"][name].get("edge"))
                         for name in gridded}
  report = json_ready(report)
  report["headline"] = headline_lib.headline(report)
  return report
