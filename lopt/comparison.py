"""Evaluating a learned optimizer against tuned baselines on a suite of tasks, VeLO-style.

``evaluate_suite`` trains every task of a suite with the learned optimizer and with each baseline (tuned ones over
their learning-rate grid in one compile), on the same held-out tasks and seeds, and returns a JSON-ready report:
per task and optimizer the mean training and test curves, the final losses, the tuned learning rate, and the
speed-up over tuned Adam (``lopt.speedup``). ``write_report`` writes ``evaluation.json``, ``evaluation.md`` and the
figures of ``lopt.plots``.

Final losses compare equal budgets: every optimizer is scored after the learned optimizer's ``num_steps``. The
baselines may train longer (``baseline_steps_factor``) so that speed-ups above 1 can be measured.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from lopt import evaluation, speedup
from lopt.eval_baselines import Baseline
from lopt.progress import Progress
from lopt.tasks.base import TaskFamily

REPORT_JSON = "evaluation.json"
REPORT_MARKDOWN = "evaluation.md"
SPEEDUP_BASELINE = "adam"


def _json_floats(values: np.ndarray) -> list[float | None]:
  """A curve as JSON numbers with 5 significant digits; non-finite entries (a diverged run) become null."""
  return [float(f"{v:.5g}") if math.isfinite(v) else None for v in np.asarray(values, np.float64).tolist()]


def _json_ready(value: Any) -> Any:
  """``value`` with every non-finite float replaced by None (strict JSON has no inf or NaN)."""
  if isinstance(value, dict):
    return {k: _json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_ready(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


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
      "train_curve": _json_floats(train_mean),
      "train_curve_std": _json_floats(_std(train)),
      "test_curve": _json_floats(np.mean(test, axis=0)),
      "eval_steps": eval_steps,
  }
  if "test_accuracy_curve" in result:
    record["test_accuracy"] = float(np.mean(pick(result["test_accuracy_curve"])[:, at]))
  return record


def evaluate_suite(suite: Mapping[str, TaskFamily], *, baselines: Sequence[Baseline],
                   learned: evaluation.OptimizerFactory | None = None, learned_name: str = "learned",
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
    num_steps: the learned optimizer's inner steps per task.
    num_seeds: tasks (seeds) per family; every optimizer trains the same ones.
    seed: selects the tasks.
    baseline_steps_factor: baselines train this many times longer, so speed-ups up to it can be measured.
    eval_every: steps between test-loss measurements; must divide ``num_steps`` (default ``num_steps // 10``).
    window: smoothing window of the training curves (default ``lopt.speedup.default_window(num_steps)``).
    compiler_options: XLA compile options, e.g. ``lopt.evaluation.FAST_COMPILE``.
    printer: receives a progress line per compiled program (the learned optimizer; all baselines of a task).

  Returns:
    The report (see ``docs/evaluation.md``), strict-JSON-ready: non-finite values (divergence) are None.
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
  progress = Progress(len(suite) * (1 + (learned is not None)), unit="programs", printer=printer)
  common = dict(num_tasks=num_seeds, eval_every=eval_every, compiler_options=compiler_options)
  key = jax.random.key(seed + evaluation.HELDOUT_SEED_OFFSET)
  tasks: dict[str, Any] = {}
  speedups: list[speedup.SpeedUp] = []
  start = time.perf_counter()
  for task_index, (task_name, family) in enumerate(suite.items()):
    task_key = jax.random.fold_in(key, task_index)
    optimizers: dict[str, Any] = {}
    grids: dict[str, np.ndarray] = {}
    if learned is not None:
      result = evaluation.train_tasks(family, learned, task_key, num_steps=num_steps, **common)
      optimizers[learned_name] = _record(result, num_steps=num_steps, window=window,
                                         eval_steps=evaluation.eval_steps(num_steps, eval_every))
      progress.step(f"{task_name}: {learned_name}")
    points = evaluation.eval_steps(baseline_steps, eval_every)
    # Every baseline and every grid value is one lane of a single compiled program (see train_stacked).
    lanes = [(i, lr) for i, b in enumerate(baselines) for lr in (b.learning_rates or (0.0,))]
    result = evaluation.train_stacked(family, [b.make for b in baselines], lanes, task_key,
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
        record["grid"] = {f"{lr:g}": float(speedup.smooth(c[:num_steps], window)[-1])
                          for lr, c in zip(baseline.learning_rates, curves)}
      optimizers[baseline.name] = record
    progress.step(f"{task_name}: {len(baselines)} baselines ({len(lanes)} runs x {num_seeds} seeds)")
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
  return _json_ready(report)


def _optimizer_names(report: Mapping[str, Any]) -> list[str]:
  return ([report["learned"]] if report["learned"] else []) + list(report["baselines"])


def _table(report: Mapping[str, Any], metric: str, *, with_speedup: bool) -> str:
  """Tasks as rows, optimizers as columns; the best (lowest) value of each row in bold."""
  names = _optimizer_names(report)
  header = ["task"] + names + (["speed-up vs tuned Adam"] if with_speedup else [])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for task_name, task in report["tasks"].items():
    values = [task["optimizers"][n][metric] for n in names]
    best = min((v for v in values if v is not None), default=None)
    cells = ["diverged" if v is None else (f"**{v:.4f}**" if v == best else f"{v:.4f}") for v in values]
    if with_speedup:
      cells.append(task["speedup"]["label"] if "speedup" in task else "-")
    lines.append(f"| {task_name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def format_markdown(report: Mapping[str, Any]) -> str:
  """The report as markdown: final training losses with speed-ups, test losses, and tuned learning rates."""
  n, m = report["num_steps"], report["baseline_steps"]
  parts = [
      f"Tasks trained for {n} steps ({report['num_seeds']} seeds each; baselines for {m} steps). Losses are "
      f"normalised (about 1 at initialisation), means over seeds; lower is better, the best of each row in bold. "
      f"Tuned baselines use, per task, the learning rate with the lowest final training loss.",
      "",
      f"### Final training loss after {n} steps (trailing mean of {report['smoothing_window']} steps)",
      "",
      _table(report, "final_train_loss", with_speedup=report["learned"] is not None),
      "",
      f"### Test loss after {n} steps",
      "",
      _table(report, "test_loss", with_speedup=False),
      "",
      "### Tuned learning rates",
      "",
      "(edge): the best value is at the end of the grid, so a wider grid might do better.",
      "",
  ]
  tuned = [name for name, grid in report["baselines"].items() if grid]
  parts.append("| task | " + " | ".join(tuned) + " |")
  parts.append("|" + "---|" * (len(tuned) + 1))
  for task_name, task in report["tasks"].items():
    cells = []
    for name in tuned:
      lr, grid = task["optimizers"][name]["learning_rate"], report["baselines"][name]
      cells.append(f"{lr:g}" + (" (edge)" if lr in (grid[0], grid[-1]) else ""))
    parts.append(f"| {task_name} | " + " | ".join(cells) + " |")
  summary = report.get("speedup_summary")
  if summary:
    parts += ["", f"Speed-up over tuned Adam across {len(report['tasks'])} tasks: geometric mean "
              f"{summary['geometric_mean']:.2f}x, median {summary['median']:.2f}x, faster on "
              f"{summary['fraction_faster']:.0%} of tasks; {summary['fraction_lower_bound']:.0%} are lower bounds "
              f"(Adam never reached the target within {m} steps)."]
  return "\n".join(parts) + "\n"


def write_report(report: Mapping[str, Any], out_dir: str) -> dict[str, str]:
  """Writes ``evaluation.json``, ``evaluation.md`` and the figures into ``out_dir``; returns ``{kind: path}``."""
  from lopt import plots  # pylint: disable=import-outside-toplevel  # matplotlib is slow to import.

  os.makedirs(out_dir, exist_ok=True)
  paths = {"json": os.path.join(out_dir, REPORT_JSON), "markdown": os.path.join(out_dir, REPORT_MARKDOWN)}
  with open(paths["json"], "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1, allow_nan=False)
  with open(paths["markdown"], "w", encoding="utf-8") as f:
    f.write(format_markdown(report))
  paths.update(plots.write_figures(report, out_dir))
  return paths


def scalar_metrics(report: Mapping[str, Any]) -> dict[str, float]:
  """Flat ``{task/optimizer/metric: value}`` scalars of a report, for metric writers (non-finite dropped)."""
  out = {}
  for task_name, task in report["tasks"].items():
    for name, record in task["optimizers"].items():
      for metric in ("final_train_loss", "test_loss", "test_accuracy"):
        if record.get(metric) is not None:
          out[f"{task_name}/{name}/{metric}"] = record[metric]
    if "speedup" in task:
      out[f"{task_name}/speedup"] = task["speedup"]["value"]
  for k, v in report.get("speedup_summary", {}).items():
    out[f"speedup/{k}"] = v
  return out


def track_report(writer: Any, report: Mapping[str, Any], paths: Mapping[str, str], *, step: int = 0) -> None:
  """Sends a written report to a ``lopt.writers.MetricWriter``: its scalars and its figures as images."""
  from lopt import plots  # pylint: disable=import-outside-toplevel

  writer.write_scalars(step, scalar_metrics(report))
  writer.write_images(step, {f"evaluation/{kind}": plots.read_image(path) for kind, path in paths.items()
                             if path.endswith(".png")})
  writer.flush()
