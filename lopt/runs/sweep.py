"""Sweeps: a grid of gin configurations meta-trained one after another, each in its own workdir, with a summary.

A sweep is the cartesian product of *variants* (extra gin files layered over the base config, e.g.
``gin_configs/ablations/estimator_es.gin``; ``base`` is the base config alone) and *axes* (``param=v1|v2|...``,
each value one gin binding). Every configuration trains in ``root/<name>`` exactly as
``experiments/meta_train.py`` would (``config.gin`` written there, checkpoints, metrics, wandb). A finished
configuration leaves ``sweep_result.json`` and is skipped when the sweep runs again; an unfinished one resumes from
its last checkpoint. ``summary.json`` and ``summary.md`` in ``root`` collect the final metrics of every
configuration.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lopt import writers
from lopt.evaluation.report import json_ready
from lopt.progress import Progress, format_seconds
from lopt.runs import training
from lopt.workdir import Workdir

BASE = "base"
SUMMARY_JSON = "summary.json"
SUMMARY_MARKDOWN = "summary.md"


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """One configuration of a sweep: gin files and bindings applied after the base ones."""

  name: str
  config_files: tuple[str, ...] = ()
  bindings: tuple[str, ...] = ()


def parse_axis(spec: str) -> tuple[str, list[str]]:
  """``"estimators.pes.std=0.01|0.1"`` -> ``("estimators.pes.std", ["0.01", "0.1"])``.

  Values are split on ``|`` (gin values may contain commas: tuples, lists).
  """
  param, sep, values = spec.partition("=")
  param = param.strip()
  choices = [v.strip() for v in values.split("|")]
  if not sep or not param or not all(choices):
    raise ValueError(f"A sweep axis is 'param=value1|value2|...', got {spec!r}.")
  return param, choices


def _slug(text: str) -> str:
  """A directory-safe version of ``text``."""
  return re.sub(r"[^A-Za-z0-9._=+,-]+", "_", text).strip("_") or "_"


def expand(variants: Sequence[str] = (BASE,), axes: Sequence[str] = ()) -> list[SweepConfig]:
  """Every combination of a variant and one value per axis, in order (variants vary slowest).

  Args:
    variants: gin files layered over the base config, or ``"base"`` for none.
    axes: ``param=v1|v2`` specs (see ``parse_axis``).

  Returns:
    The configurations, with distinct names like ``estimator_es,estimators.pes.std=0.1``.
  """
  parsed = [parse_axis(a) for a in axes]
  params = [p for p, _ in parsed]
  if len(set(params)) != len(params):
    raise ValueError(f"An axis is given twice: {params}.")
  for variant in variants:
    if variant != BASE and not os.path.isfile(variant):
      raise ValueError(f"Sweep variant '{variant}' is neither '{BASE}' nor an existing gin file.")
  configs = []
  for variant in variants or (BASE,):
    files = () if variant == BASE else (variant,)
    stem = BASE if variant == BASE else os.path.splitext(os.path.basename(variant))[0]
    for values in itertools.product(*[choices for _, choices in parsed]):
      parts = [stem] * (bool(files) or not parsed) + [f"{p}={v}" for p, v in zip(params, values)]
      configs.append(SweepConfig(name=_slug(",".join(parts)), config_files=files,
                                 bindings=tuple(f"{p} = {v}" for p, v in zip(params, values))))
  names = [c.name for c in configs]
  if len(set(names)) != len(names):
    raise ValueError(f"Sweep configurations need distinct names, got {names}.")
  return configs


def _final_metrics(workdir: str, result: Any) -> dict[str, float]:
  """What a finished run reports: its last logged training metrics, the last periodic meta-evaluation and the
  held-out comparison's means over families (``heldout/<optimizer>/<metric>``)."""
  metrics: dict[str, float] = {k: float(v) for k, v in (result.metrics or {}).items()
                               if k in ("meta_loss", "steps_per_sec")}
  path = Workdir(workdir).metrics
  if os.path.exists(path):
    for row in writers.read_jsonl(path):
      metrics.update({k: v for k, v in row.items() if k.startswith("meta_eval/mean/") and v is not None})
  if isinstance(result.evaluation, Mapping):  # heldout_comparison: {family: {optimizer: {metric: value}}}
    rows: dict[str, list[float]] = {}
    for per_optimizer in result.evaluation.values():
      for optimizer, summary in per_optimizer.items():
        for metric, value in summary.items():
          rows.setdefault(f"heldout/{optimizer}/{metric}", []).append(value)
    metrics.update({k: float(np.mean(v)) for k, v in rows.items()})
  return metrics


def run_config(sweep_config: SweepConfig, workdir: str, *, base_configs: Sequence[str],
               base_bindings: Sequence[str], wandb_mode: str) -> dict[str, Any]:
  """Meta-trains one configuration in ``workdir`` as ``experiments/meta_train.py`` would; returns its record."""
  start = time.perf_counter()
  result = training.meta_train_in_workdir(workdir, gin_configs=list(base_configs) + list(sweep_config.config_files),
                                          gin_bindings=list(base_bindings) + list(sweep_config.bindings),
                                          wandb_mode=wandb_mode)
  return {"name": sweep_config.name, "config_files": list(sweep_config.config_files),
          "bindings": list(sweep_config.bindings), "step": result.step, "seconds": time.perf_counter() - start,
          "interrupted": result.interrupted, "metrics": _final_metrics(workdir, result)}


def run_sweep(configs: Sequence[SweepConfig], root: str, *, base_configs: Sequence[str] = (),
              base_bindings: Sequence[str] = (), wandb_mode: str = "offline",
              printer: Callable[[str], None] = print,
              run: Callable[..., dict[str, Any]] = run_config) -> list[dict[str, Any]]:
  """Runs every configuration not finished yet, then writes the summary; returns one record per configuration.

  Args:
    configs: from ``expand``.
    root: each configuration trains in ``root/<name>``.
    base_configs, base_bindings: the gin files and bindings every configuration starts from.
    wandb_mode: for every run.
    printer: receives progress lines.
    run: runs one configuration (``run_config``; tests may substitute it).

  Returns:
    The records (finished ones read back from their ``sweep_result.json``). A run stopped by SIGTERM/SIGINT stops
    the sweep; running it again resumes there.
  """
  os.makedirs(root, exist_ok=True)
  records = []
  progress = Progress(len(configs), unit="configs", printer=printer)
  for sweep_config in configs:
    workdir = os.path.join(root, sweep_config.name)
    done_path = Workdir(workdir).sweep_result
    if os.path.exists(done_path):
      with open(done_path, encoding="utf-8") as f:
        records.append(json.load(f))
      progress.step(f"{sweep_config.name}: already finished, skipped")
      continue
    printer(f"Sweep: training {sweep_config.name} in {workdir}")
    os.makedirs(workdir, exist_ok=True)
    record = run(sweep_config, workdir, base_configs=base_configs, base_bindings=base_bindings,
                 wandb_mode=wandb_mode)
    records.append(record)
    if record.get("interrupted"):
      printer(f"Sweep stopped during {sweep_config.name}; run the same command to resume.")
      break
    with open(done_path, "w", encoding="utf-8") as f:
      json.dump(json_ready(record), f, indent=1)
    progress.step(f"{sweep_config.name}: done in {format_seconds(record['seconds'])}")
  write_summary(records, root)
  return records


# Markdown columns: (metric-name prefix, header prefix). The JSON summary keeps every metric, including the
# held-out scores of Adam and of the untrained initialisation.
SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("meta_loss", "meta_loss"), ("steps_per_sec", "steps/s"),
    ("heldout/meta-trained/", "held-out "), ("meta_eval/mean/", "meta-eval "))


def format_summary(records: Sequence[Mapping[str, Any]]) -> str:
  """A markdown table: one row per configuration; its final training metrics, the meta-trained optimizer's
  held-out scores and the last periodic meta-evaluation (losses are normalised; lower is better)."""
  names = sorted({k for r in records for k in r["metrics"]})
  columns = [(name, header + name[len(prefix):]) for prefix, header in SUMMARY_COLUMNS for name in names
             if name.startswith(prefix)]
  lines = ["| config | steps | minutes | " + " | ".join(h for _, h in columns) + " |",
           "|" + "---|" * (len(columns) + 3)]
  for r in records:
    cells = [f"{r['metrics'][c]:.4g}" if r["metrics"].get(c) is not None else "-" for c, _ in columns]
    lines.append(f"| {r['name']} | {r['step']} | {r['seconds'] / 60:.1f} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_summary(records: Sequence[Mapping[str, Any]], root: str) -> dict[str, str]:
  """Writes ``summary.json`` and ``summary.md`` into ``root``; returns their paths."""
  paths = {"json": os.path.join(root, SUMMARY_JSON), "markdown": os.path.join(root, SUMMARY_MARKDOWN)}
  with open(paths["json"], "w", encoding="utf-8") as f:
    json.dump(json_ready(list(records)), f, indent=1, allow_nan=False)
  with open(paths["markdown"], "w", encoding="utf-8") as f:
    f.write(format_summary(records))
  return paths


def sweep_from_flags(root: str, *, variants: Sequence[str] = (BASE,), grid: Sequence[str] = (),
                     base_configs: Sequence[str] = (), base_bindings: Sequence[str] = (),
                     wandb_mode: str = "offline", dry_run: bool = False,
                     printer: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """What ``experiments/sweep.py`` does: expand the grid, list it, run it (unless ``dry_run``), print the summary."""
  configs = expand(variants, grid)
  for path in base_configs:
    if not os.path.isfile(path):
      raise ValueError(f"Gin config file '{path}' does not exist.")
  printer(f"Sweep of {len(configs)} configurations in {root}:")
  for c in configs:
    printer(f"  {c.name}: files {list(c.config_files)}, bindings {list(c.bindings)}")
  if dry_run:
    return []
  records = run_sweep(configs, root, base_configs=base_configs, base_bindings=base_bindings, wandb_mode=wandb_mode,
                      printer=printer)
  printer(format_summary(records))
  return records
