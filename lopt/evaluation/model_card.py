"""Model cards of shipped optimizers, generated from stored results so that the card's numbers are the command's.

A card has two files under ``docs/pretrained/``: ``<name>.json``, the results (the recipe and its run, the
meta-training curve, every evaluation's headline and per-task numbers, ablations), and ``<name>.md``, the card,
which ``render`` produces from the JSON alone. ``experiments/model_card.py`` builds the JSON from a run directory and
``experiments/evaluate.py`` output directories (``collect_*``) and writes both; ``tests/test_model_card.py`` renders
every stored JSON and compares it with the stored card, so a hand-edited number fails.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

from lopt.evaluation import headline as headline_lib
from lopt.workdir import HORIZON_DIR, REPORT_JSON

CURVE_POINTS = 200  # points of the meta-training curve kept in the results


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"Cannot read {path}: {e}") from e


def _task_row(task: Mapping[str, Any], learned: str, tuned: str | None) -> dict[str, Any]:
  """The numbers of one task that a card shows (final training losses at equal steps, speed-ups)."""
  optimizers = task["optimizers"]
  adam = optimizers.get("adam", {})
  row = {"learned": optimizers[learned]["final_train_loss"],
         "learned_test": optimizers[learned].get("test_loss"),
         "adam_1e-3": adam.get("grid", {}).get(headline_lib.ADAM_FIXED_RATE),
         "tuned_adam": adam.get("final_train_loss"), "tuned_adam_lr": adam.get("learning_rate"),
         "tuned_adam_test": adam.get("test_loss"),
         "speedup": task.get("speedup", {}).get("label")}
  if "adam_cosine" in optimizers:  # absent (not evaluated) differs from None (diverged)
    row["adam_cosine"] = optimizers["adam_cosine"]["final_train_loss"]
  if tuned:
    row.update(learned_tuned=optimizers[tuned]["final_train_loss"], multiplier=optimizers[tuned]["multiplier"],
               speedup_tuned=task.get("speedup_tuned", {}).get("label"))
  return row


def collect_evaluation(out_dir: str) -> dict[str, Any]:
  """``{horizon label: {"num_steps", "num_seeds", "headline", "tasks"}}`` from an ``evaluate.py`` output directory
  (``evaluation.json`` for 1x, ``horizon_<h>x/evaluation.json`` for the others)."""
  found = {}
  prefix, suffix = HORIZON_DIR.split("{}")
  horizons = sorted(int(d[len(prefix):-len(suffix)]) for d in os.listdir(out_dir)
                    if d.startswith(prefix) and d.endswith(suffix) and d[len(prefix):-len(suffix)].isdigit())
  candidates = [(1, out_dir)] + [(h, os.path.join(out_dir, HORIZON_DIR.format(h))) for h in horizons if h != 1]
  for horizon, directory in candidates:
    path = os.path.join(directory, REPORT_JSON)
    if not os.path.exists(path):
      continue
    report = _read_json(path)
    if not report.get("learned"):
      raise ValueError(f"{path} evaluates no learned optimizer (a baselines-only report).")
    tasks = {name: _task_row(task, report["learned"], report.get("learned_tuned"))
             for name, task in report["tasks"].items()}
    found[f"{horizon}x"] = {"num_steps": report["num_steps"], "num_seeds": report["num_seeds"],
                            "headline": report["headline"], "tasks": tasks}
  if not found:
    raise ValueError(f"No {REPORT_JSON} in {out_dir} or its horizon_<h>x directories.")
  return found


def collect_run(workdir: str, metrics_file: str = "metrics.jsonl") -> dict[str, Any]:
  """The meta-training curve (meta-loss, at most ``CURVE_POINTS`` points) and the periodic meta-evaluation's guard
  metric (``meta_eval/mean/...``) from a run's metrics."""
  path = os.path.join(workdir, metrics_file)
  steps, losses, evals = [], [], {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      step = record.get("step")
      if "meta_loss" in record:
        steps.append(step)
        losses.append(record["meta_loss"])
      for key, value in record.items():
        if key.startswith("meta_eval/mean/"):
          evals.setdefault(key[len("meta_eval/"):], []).append([step, value])
  stride = max(1, math.ceil(len(steps) / CURVE_POINTS))
  return {"steps": steps[::stride], "meta_loss": losses[::stride], "meta_eval": evals}


def _fmt(value: Any) -> str:
  if value is None:
    return "diverged"
  if isinstance(value, str):
    return value
  return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def _headline_rows(evaluations: Mapping[str, Mapping[str, Any]]) -> list[str]:
  lines = ["| suite | horizon | protocol | beats Adam(1e-3) | beats tuned Adam | speed-up geomean | diverged |",
           "|---|---|---|---|---|---|---|"]
  for suite, horizons in evaluations.items():
    for label, evaluation in horizons.items():
      for protocol, s in evaluation["headline"].items():
        n = s["num_tasks"]
        count = lambda k, s=s, n=n: "-" if s.get(k) is None else f"{len(s[k])}/{n}"
        geomean = f"{s['speedup_geomean']:.2f}x" if "speedup_geomean" in s else "-"
        lines.append(f"| {suite} | {label} ({evaluation['num_steps']} steps) | {protocol} | "
                     f"{count('beats_adam_1e-3')} | {count('beats_tuned_adam')} | {geomean} | {count('diverged')} |")
  return lines


def _task_table(evaluation: Mapping[str, Any]) -> list[str]:
  tuned = any("learned_tuned" in row for row in evaluation["tasks"].values())
  cosine = any("adam_cosine" in row for row in evaluation["tasks"].values())
  head = ["task", "learned", "Adam(1e-3)", "tuned Adam (lr)"] + ["Adam+cosine (tuned)"] * cosine + ["speed-up"]
  if tuned:
    head += ["learned, tuned x (multiplier)", "speed-up (tuned)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for task, row in evaluation["tasks"].items():
    lr = f" ({row['tuned_adam_lr']:g})" if row.get("tuned_adam_lr") is not None else ""
    cells = ([task, _fmt(row["learned"]), _fmt(row["adam_1e-3"]), _fmt(row["tuned_adam"]) + lr]
             + [_fmt(row.get("adam_cosine", "-"))] * cosine + [_fmt(row["speedup"] or "-")])
    if tuned:
      cells += [f"{_fmt(row['learned_tuned'])} ({row['multiplier']:g})", _fmt(row["speedup_tuned"] or "-")]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _losses(evaluations: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """Where the shipped (hyperparameter-free) optimizer does not beat tuned Adam, per suite and horizon."""
  lines = []
  for suite, horizons in evaluations.items():
    for label, evaluation in horizons.items():
      s = evaluation["headline"].get("hparam_free", {})
      if "beats_tuned_adam" not in s:
        continue
      lost = [t for t in evaluation["tasks"] if t not in s["beats_tuned_adam"]]
      lines.append(f"- {suite}, {label}: " + (", ".join(f"{t} ({evaluation['tasks'][t]['speedup']})" for t in lost)
                                               if lost else "none"))
  return lines


def render(results: Mapping[str, Any]) -> str:
  """The model card (markdown) of ``results`` (the JSON ``experiments/model_card.py`` writes)."""
  recipe = results["recipe"]
  parts = [f"# Model card: `{results['name']}`", "",
           f"_Generated by `{results['command']}` from `docs/pretrained/{results['name']}.json`; do not edit by "
           "hand._", "", results.get("summary", ""), "", "## Recipe", ""]
  parts += [f"- {key}: {value}" for key, value in recipe.items()]
  parts += ["", "## Headline", "", "Counts are tasks of the suite; speed-ups are VeLO's (steps tuned Adam needs to "
            "reach the learned optimizer's final training loss, over its steps; `>` marks a lower bound). "
            "`hparam_free` is the optimizer as shipped; `tuned` multiplies its update by a per-task multiplier chosen "
            "on the same half-decade grid and criterion as Adam's learning rate.", ""]
  parts += _headline_rows(results["evaluations"])
  parts += ["", "## Where it loses to tuned Adam (hyperparameter-free)", ""] + _losses(results["evaluations"])
  for suite, horizons in results["evaluations"].items():
    for label, evaluation in horizons.items():
      parts += ["", f"## {suite}, {label}: {evaluation['num_steps']} steps, {evaluation['num_seeds']} seeds", "",
                "Final training loss (normalised, smoothed, mean over seeds) at equal steps.", ""]
      parts += _task_table(evaluation)
  if results.get("ablations"):
    parts += ["", "## Ablations at equal budget", "", results.get("ablation_note", ""), "",
              "| variant | suite | beats Adam(1e-3) | beats tuned Adam | speed-up geomean |", "|---|---|---|---|---|"]
    for row in results["ablations"]:
      s = row["headline"]
      n = s["num_tasks"]
      parts.append(f"| {row['label']} | {row['suite']} | {len(s.get('beats_adam_1e-3', []))}/{n} | "
                   f"{len(s.get('beats_tuned_adam', []))}/{n} | {s.get('speedup_geomean', float('nan')):.2f}x |")
  if results.get("figure"):
    parts += ["", "## Meta-training", "", f"![meta-training curves]({results['figure']})"]
  if results.get("notes"):
    parts += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
  return "\n".join(parts).replace("\n\n\n", "\n\n") + "\n"


def ablation_row(label: str, suite: str, out_dir: str, *, horizon: str = "1x",
                 protocol: str = "hparam_free") -> dict[str, Any]:
  """One ablation row: the headline of ``protocol`` at ``horizon`` of an ``evaluate.py`` output directory."""
  evaluation = collect_evaluation(out_dir)[horizon]
  return {"label": label, "suite": suite, "headline": evaluation["headline"][protocol]}


def split_flag(value: str, names: Sequence[str]) -> list[str]:
  """``"a=b=c"`` into one field per name (the last may contain ``=``); a malformed flag names its form."""
  fields = value.split("=", len(names) - 1)
  if len(fields) != len(names) or not all(fields):
    raise ValueError(f"Expected {'='.join(names)}, got {value!r}.")
  return fields


def plot_run(run: Mapping[str, Any], path: str) -> None:
  """The meta-loss and the meta-evaluation score over outer steps, as a PNG."""
  import matplotlib  # pylint: disable=import-outside-toplevel  # slow to import; only the card command needs it
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  axes[0].plot(run["steps"], run["meta_loss"])
  axes[0].set(xlabel="outer step", ylabel="meta-loss (PES, mean normalised)", title="meta-training loss")
  for name, points in run["meta_eval"].items():
    if points:
      axes[1].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
  axes[1].set(xlabel="outer step", title="periodic meta-evaluation (lower is better)")
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def build(name: str, *, recipe_path: str, workdir: str | None, evaluations: Sequence[Sequence[str]],
          ablations: Sequence[Sequence[str]], ablation_note: str, figure_dir: str,
          card_dir: str) -> dict[str, Any]:
  """The results of a card: the recipe facts (a JSON file), the run's curves (plotted into ``figure_dir``), the
  evaluations (``(suite, out_dir)`` pairs) and the ablations (``(label, suite, out_dir)``)."""
  recipe = dict(_read_json(recipe_path))
  results: dict[str, Any] = {"name": name, "command": recipe.pop("card_command", "python experiments/model_card.py"),
                             "summary": recipe.pop("summary", ""), "notes": recipe.pop("notes", []),
                             "recipe": recipe}
  if workdir:
    run = collect_run(workdir)
    figure = os.path.join(figure_dir, f"pretrained_{name}_curves.png")
    plot_run(run, figure)
    results["meta_training"] = run
    results["figure"] = os.path.relpath(figure, card_dir)
  results["evaluations"] = {suite: collect_evaluation(out_dir) for suite, out_dir in evaluations}
  results["ablations"] = [ablation_row(label, suite, out_dir) for label, suite, out_dir in ablations]
  results["ablation_note"] = ablation_note
  return results


def write(results: Mapping[str, Any], directory: str) -> tuple[str, str]:
  """Writes ``<name>.json`` and ``<name>.md`` into ``directory``; returns their paths."""
  os.makedirs(directory, exist_ok=True)
  json_path = os.path.join(directory, f"{results['name']}.json")
  md_path = os.path.join(directory, f"{results['name']}.md")
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1, sort_keys=False)
    f.write("\n")
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(render(results))
  return json_path, md_path


def stored(directory: str) -> Sequence[str]:
  """Names of the cards stored in ``directory`` (a ``.json`` with a matching ``.md``)."""
  return sorted(n[:-5] for n in os.listdir(directory)
                if n.endswith(".json") and os.path.exists(os.path.join(directory, n[:-5] + ".md")))
