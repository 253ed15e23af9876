"""Figures of an evaluation report (``scoring.evaluate_suite``): learning curves per task and the speed-up distribution.

matplotlib runs on its non-interactive Agg backend, so figures render without a display.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import numpy as np

try:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.ticker
  from matplotlib import pyplot as plt
except ImportError as e:  # pragma: no cover - matplotlib is a dependency; this names it for broken installs.
  raise ImportError("lopt.plots needs matplotlib: `pip install matplotlib` (it is in lopt's install_requires).") from e

from lopt.evaluation import speedup
from lopt.workdir import REPORT_FIGURES

DPI = 80
FIGURES = REPORT_FIGURES


def _curve(values: list[float | None]) -> np.ndarray:
  return np.array([np.nan if v is None else v for v in values], np.float64)


def _grid(num: int) -> tuple[int, int]:
  cols = min(3, num)
  return math.ceil(num / cols), cols


def _names(report: Mapping[str, Any]) -> list[str]:
  learned = [report.get("learned"), report.get("learned_tuned")]
  return [n for n in learned if n] + list(report["baselines"])


def _label(name: str, record: Mapping[str, Any]) -> str:
  return f"{name} ({record['learning_rate']:g})" if "learning_rate" in record else name


def learning_curves(report: Mapping[str, Any], *, split: str) -> "plt.Figure":
  """One panel per task with every optimizer's mean curve (log scale); ``split`` is ``"train"`` or ``"test"``.

  Training curves are smoothed like the speed-up metric (trailing mean); the learned optimizer is drawn thick and
  black. A dotted line marks the learned optimizer's budget when the baselines trained longer.
  """
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
  tasks = report["tasks"]
  rows, cols = _grid(len(tasks))
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
  colors = plt.get_cmap("tab10").colors
  names = _names(report)
  for ax, (task_name, task) in zip(axes.flat, tasks.items()):
    starts, lows = [], []
    for i, name in enumerate(names):
      record = task["optimizers"][name]
      if split == "train":
        y = speedup.smooth(_curve(record["train_curve"]), report["smoothing_window"])
        x = np.arange(len(y))
      else:
        y, x = _curve(record["test_curve"]), np.asarray(record["eval_steps"])
      y = np.where(np.isfinite(y), y, np.nan)
      if np.isfinite(y[0]):
        starts.append(y[0])
      if np.any(y > 0):
        lows.append(np.nanmin(np.where(y > 0, y, np.nan)))
      learned = name == report["learned"]
      ax.plot(x, y, color="black" if learned else colors[i % len(colors)], lw=2.2 if learned else 1.1,
              label=_label(name, record), zorder=3 if learned else 2)
    if report["baseline_steps"] > report["num_steps"]:
      ax.axvline(report["num_steps"], color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    if starts and lows:  # diverging runs would stretch the axis over many decades; clip them off the top
      ax.set_ylim(min(lows) * 0.7, max(starts) * 3)
    ax.set_title(task_name, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7, which="both")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, loc="upper right")
  for ax in list(axes.flat)[len(tasks):]:
    ax.axis("off")
  what = "training loss (trailing mean)" if split == "train" else "test loss"
  fig.suptitle(f"Normalised {what}, mean over {report['num_seeds']} seeds; tuned learning rates in brackets",
               fontsize=10)
  fig.tight_layout()
  return fig


def _speedup_axis(axis: Any, low: float, high: float) -> None:
  """Log axis between ``low`` and ``high`` with ticks labelled ``0.5x``, ``1x``, ``2x``..."""
  ticks = [t * 10.0**e for e in range(-3, 4) for t in (1, 2, 5)]
  low, high = min(low, 0.5) / 1.3, max(high, 2.0) * 1.3
  axis.set_ticks([t for t in ticks if low <= t <= high], [f"{t:g}x" for t in ticks if low <= t <= high])
  axis.set_minor_locator(matplotlib.ticker.NullLocator())


def speedup_distribution(report: Mapping[str, Any]) -> "plt.Figure":
  """VeLO's figure 1: per-task speed-ups over tuned Adam (sorted bars), and the fraction of tasks at or above each
  speed-up. Hatched bars are lower bounds (Adam never reached the target); 1x is marked."""
  items = [(name, task["speedup"]) for name, task in report["tasks"].items() if "speedup" in task]
  if not items:
    raise ValueError("The report has no speed-ups (it was made without a learned optimizer or without Adam).")
  items.sort(key=lambda item: item[1]["value"])
  values = np.array([max(s["value"], 1e-2) for _, s in items])  # log axes cannot show 0
  fig, (bars, cdf) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1.4, 1]})
  colors = ["tab:green" if s["value"] > 1 or (s["lower_bound"] and s["value"] >= 1) else "tab:red" for _, s in items]
  drawn = bars.bar(range(len(items)), values, color=colors)
  for bar, (_, s) in zip(drawn, items):
    if s["lower_bound"]:
      bar.set_hatch("//")
    bars.annotate(s["label"], (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                  fontsize=7)
  bars.axhline(1.0, color="black", lw=1, ls="--")
  bars.set_yscale("log")
  _speedup_axis(bars.yaxis, values.min(), values.max())
  bars.set_ylim(min(values.min(), 0.5) / 1.3, max(values.max(), 2.0) * 1.3)
  bars.set_xticks(range(len(items)), [name for name, _ in items], rotation=30, ha="right", fontsize=8)
  bars.set_ylabel("speed-up over tuned Adam", fontsize=9)
  bars.set_title("Steps tuned Adam needs / steps of the learned optimizer", fontsize=9)
  thresholds = np.sort(values)
  fraction = 1.0 - np.arange(len(thresholds)) / len(thresholds)
  cdf.step(thresholds, fraction, where="post", color="black")
  cdf.scatter(thresholds, fraction, s=12, color="black")
  cdf.axvline(1.0, color="black", lw=1, ls="--")
  cdf.set_xscale("log")
  _speedup_axis(cdf.xaxis, values.min(), values.max())
  cdf.set_xlim(min(values.min(), 0.5) / 1.3, max(values.max(), 2.0) * 1.3)
  cdf.set_ylim(0, 1.05)
  cdf.set_xlabel("speed-up x", fontsize=9)
  cdf.set_ylabel("fraction of tasks with speed-up >= x", fontsize=9)
  summary = report.get("speedup_summary", {})
  if summary:
    cdf.set_title(f"geometric mean {summary['geometric_mean']:.2f}x, median {summary['median']:.2f}x", fontsize=9)
  for ax in (bars, cdf):
    ax.grid(alpha=0.3, which="both")
    ax.tick_params(labelsize=8)
  fig.tight_layout()
  return fig


def write_figures(report: Mapping[str, Any], out_dir: str) -> dict[str, str]:
  """Saves the learning curves and (when the report has speed-ups) their distribution; returns ``{kind: path}``."""
  figures = {"train_curves": learning_curves(report, split="train"),
             "test_curves": learning_curves(report, split="test")}
  if any("speedup" in task for task in report["tasks"].values()):
    figures["speedups"] = speedup_distribution(report)
  paths = {}
  for kind, fig in figures.items():
    paths[kind] = os.path.join(out_dir, FIGURES[kind])
    fig.savefig(paths[kind], dpi=DPI)
    plt.close(fig)
    _shrink_png(paths[kind])
  return paths


def _shrink_png(path: str) -> None:
  """Re-saves a PNG with a 256-colour palette: line plots look the same at a fraction of the size."""
  from PIL import Image  # pylint: disable=import-outside-toplevel  # Pillow comes with matplotlib.

  with Image.open(path) as image:
    small = image.convert("RGB").quantize(colors=256)
  small.save(path, optimize=True)


def read_image(path: str) -> np.ndarray:
  """A PNG as an (H, W, 3) uint8 array (what ``MetricWriter.write_images`` takes)."""
  image = plt.imread(path)
  if image.dtype != np.uint8:
    image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
  return image[..., :3]


def meta_training_curves(rows: list[Mapping[str, Any]], *, eval_metric: str = "meta_eval/mean/final_train_loss_vs_adam",
                         path: str) -> str:
  """Saves a two-panel figure of a run's ``metrics.jsonl`` rows: the meta-loss and the meta-eval ``eval_metric``
  against the outer step (the best meta-eval so far dashed); returns ``path``."""
  train = [(r["step"], r["meta_loss"]) for r in rows if "meta_loss" in r]
  evals = [(r["step"], r[eval_metric]) for r in rows if eval_metric in r]
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
  if train:
    axes[0].plot(*zip(*train), lw=1)
  axes[0].set(xlabel="outer step", ylabel="meta-loss (normalised)", title="meta-training loss")
  if evals:
    steps, values = zip(*evals)
    axes[1].plot(steps, values, "o-", lw=1, ms=3, label="meta-eval")
    axes[1].plot(steps, np.minimum.accumulate(np.asarray(values, np.float64)), "--", lw=1, label="best so far")
    axes[1].axhline(1.0, color="grey", lw=0.5)
    axes[1].legend(fontsize=8)
  axes[1].set(xlabel="outer step", ylabel=eval_metric.split("/", 1)[-1], title="held-out meta-eval")
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  _shrink_png(path)
  return path
