"""An evaluation report as files and metrics: strict JSON, a markdown summary, figures, and scalars for writers.

The report is the dict ``scoring.evaluate_suite`` returns. ``write_report`` writes ``evaluation.json``,
``evaluation.md`` and the figures of ``plots`` into a directory; ``track_report`` sends its scalars and figures to a
``lopt.writers.MetricWriter``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np

from lopt.workdir import REPORT_JSON, REPORT_MARKDOWN


def json_floats(values: np.ndarray) -> list[float | None]:
  """A curve as JSON numbers with 5 significant digits; non-finite entries (a diverged run) become null."""
  return [float(f"{v:.5g}") if math.isfinite(v) else None for v in np.asarray(values, np.float64).tolist()]


def json_ready(value: Any) -> Any:
  """``value`` with every non-finite float replaced by None (strict JSON has no inf or NaN)."""
  if isinstance(value, dict):
    return {k: json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_ready(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


# Marks a tuned baseline whose best learning rate is at an end of its grid (``tuned_baselines.edge_hit``).
EDGE_MARK = " (edge)"


def _edge(record: Mapping[str, Any], grid: list[float]) -> bool:
  # Reports written before the "edge" field existed: recompute it from the grid.
  if "edge" in record:
    return bool(record["edge"])
  return record["learning_rate"] in (grid[0], grid[-1])


def _comparison(report: Mapping[str, Any]) -> list[str]:
  """Per baseline, on how many tasks the learned optimizer's final training loss is lower; Adam at 1e-3 untuned."""
  learned, tasks = report["learned"], report["tasks"]
  if not learned:
    return []

  def lower(get):
    wins = 0
    for task in tasks.values():
      mine, theirs = task["optimizers"][learned]["final_train_loss"], get(task)
      wins += mine is not None and (theirs is None or mine < theirs)
    return wins

  rows = [f"{name}: {lower(lambda t, n=name: t['optimizers'][n]['final_train_loss'])}/{len(tasks)}"
          for name in report["baselines"]]
  if all("0.001" in t["optimizers"].get("adam", {}).get("grid", {}) for t in tasks.values()):
    rows.append(f"adam at 1e-3 (untuned): {lower(lambda t: t['optimizers']['adam']['grid']['0.001'])}/{len(tasks)}")
  diverged = sum(t["optimizers"][learned]["final_train_loss"] is None for t in tasks.values())
  return ["", f"Tasks on which {learned} ends with a lower final training loss than each baseline: "
          + ", ".join(rows) + f". It diverged on {diverged}/{len(tasks)} tasks."]


def _optimizer_names(report: Mapping[str, Any]) -> list[str]:
  learned = [report.get("learned"), report.get("learned_tuned")]
  return [n for n in learned if n] + list(report["baselines"])


def _table(report: Mapping[str, Any], metric: str, *, with_speedup: bool) -> str:
  """Tasks as rows, optimizers as columns; the best (lowest) value of each row in bold."""
  names = _optimizer_names(report)
  tuned = with_speedup and bool(report.get("learned_tuned"))
  header = (["task"] + names + (["speed-up vs tuned Adam"] if with_speedup and report.get("learned") else [])
            + (["speed-up (tuned) vs tuned Adam"] if tuned else []))
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for task_name, task in report["tasks"].items():
    values = [task["optimizers"][n][metric] for n in names]
    best = min((v for v in values if v is not None), default=None)
    edges = [EDGE_MARK if task["optimizers"][n].get("edge") else "" for n in names]
    cells = ["diverged" + e if v is None else (f"**{v:.4f}**{e}" if v == best else f"{v:.4f}{e}")
             for v, e in zip(values, edges)]
    if with_speedup and report.get("learned"):
      cells.append(task["speedup"]["label"] if "speedup" in task else "-")
    if tuned:
      cells.append(task["speedup_tuned"]["label"] if "speedup_tuned" in task else "-")
    lines.append(f"| {task_name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _headline_lines(report: Mapping[str, Any]) -> list[str]:
  """The headline per protocol (``headline.format_headline``) and the wall time of each part, when present."""
  from lopt.evaluation import headline  # pylint: disable=import-outside-toplevel  # scoring imports this module

  lines = []
  if report.get("headline"):
    lines += ["### Headline (lower final training loss at equal steps)", "",
              *[f"- {line}" for line in headline.format_headline(report["headline"]).splitlines()], ""]
  if "seconds_learned" in report:
    cache = report.get("baseline_cache")
    cached = (f" (baseline cache {cache['directory']}: {cache['hits']} hits, {cache['misses']} misses)"
              if cache else " (no baseline cache)")
    lines += [f"Wall time: candidate {report['seconds_learned']:.1f} s, baselines {report['seconds_baselines']:.1f} s"
              f"{cached}.", ""]
  return lines


def format_markdown(report: Mapping[str, Any]) -> str:
  """The report as markdown: final training losses with speed-ups, test losses, and tuned learning rates."""
  n, m = report["num_steps"], report["baseline_steps"]
  parts = _headline_lines(report) + [
      f"Tasks trained for {n} steps ({report['num_seeds']} seeds each; baselines for {m} steps). Losses are "
      f"normalised (about 1 at initialisation), means over seeds; lower is better, the best of each row in bold. "
      f"Tuned baselines use, per task, the learning rate with the lowest final training loss; (edge) marks a "
      f"tuned value at an end of its grid (a wider grid might do better).",
      "",
      f"### Final training loss after {n} steps (trailing mean of {report['smoothing_window']} steps)",
      "",
      _table(report, "final_train_loss", with_speedup=bool(report.get("learned") or report.get("learned_tuned"))),
      "",
      f"### Test loss after {n} steps",
      "",
      _table(report, "test_loss", with_speedup=False),
      "",
      "### Tuned learning rates (and the tuned protocol's multiplier)",
      "",
      "(edge): the best value is at the end of the grid, so a wider grid might do better.",
      "",
  ]
  grids = {name: grid for name, grid in report["baselines"].items() if grid}
  if report.get("learned_tuned"):  # its multiplier, tuned like a learning rate
    grids = {report["learned_tuned"]: report["multipliers"], **grids}
  tuned = list(grids)
  parts.append("| task | " + " | ".join(f"{name} (multiplier)" if name == report.get("learned_tuned") else name
                                        for name in tuned) + " |")
  parts.append("|" + "---|" * (len(tuned) + 1))
  for task_name, task in report["tasks"].items():
    cells = []
    for name in tuned:
      record, grid = task["optimizers"][name], grids[name]
      value = record["multiplier"] if name == report.get("learned_tuned") else record["learning_rate"]
      cells.append(f"{value:g}" + (EDGE_MARK if _edge(record, grid) else ""))
    parts.append(f"| {task_name} | " + " | ".join(cells) + " |")
  hits = {name: [t for t, task in report["tasks"].items() if _edge(task["optimizers"][name], grids[name])]
          for name in tuned}
  parts += ["", "Edge hits: " + (", ".join(f"{name} on {len(v)}/{len(report['tasks'])} ({', '.join(v)})"
                                          for name, v in hits.items() if v) or "none") + "."]
  parts += _comparison(report)
  summary = report.get("speedup_summary")
  if summary:
    parts += ["", f"Speed-up over tuned Adam across {len(report['tasks'])} tasks: geometric mean "
              f"{summary['geometric_mean']:.2f}x, median {summary['median']:.2f}x, faster on "
              f"{summary['fraction_faster']:.0%} of tasks; {summary['fraction_lower_bound']:.0%} are lower bounds "
              f"(Adam never reached the target within {m} steps)."]
  return "\n".join(parts) + "\n"


def write_report(report: Mapping[str, Any], out_dir: str) -> dict[str, str]:
  """Writes ``evaluation.json``, ``evaluation.md`` and the figures into ``out_dir``; returns ``{kind: path}``."""
  from lopt.evaluation import plots  # pylint: disable=import-outside-toplevel  # matplotlib is slow to import.

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
  from lopt.evaluation import plots  # pylint: disable=import-outside-toplevel

  writer.write_scalars(step, scalar_metrics(report))
  writer.write_images(step, {f"evaluation/{kind}": plots.read_image(path) for kind, path in paths.items()
                             if path.endswith(".png")})
  writer.flush()
