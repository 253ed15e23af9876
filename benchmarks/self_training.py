"""Self-training: the same fresh `ff` meta-trained with Adam and with a meta-trained optimizer as the outer optimizer.

  python benchmarks/self_training.py --outer_workdir=/tmp/lopt_quickstart --root=/tmp/lopt_self_training \
      --out=/tmp/self_training.json --plot=docs/images/self_training.png

Both runs use gin_configs/experiments/small_quadratic.gin (PES on 4-d quadratics, the same seed, tasks and
budget); the learned one adds gin_configs/experiments/self_training.gin. Prints a table of the final meta-loss and
of the held-out comparison each run ends with, writes it as JSON and plots both meta-loss curves.
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lopt import compilation_cache, runs, writers  # noqa: E402
from lopt.workdir import Workdir  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "adam": ["gin_configs/experiments/small_quadratic.gin"],
    "learned": ["gin_configs/experiments/self_training.gin"],
}


def run_pair(outer_workdir: str | None, root: str, num_outer_steps: int, seed: int,
             outer_pretrained: str | None = None) -> dict[str, dict]:
  results = {}
  for name, configs in CONFIGS.items():
    workdir = os.path.join(root, f"{name}_seed{seed}")
    bindings = [f"NUM_OUTER_STEPS = {num_outer_steps}", f"meta_train.seed = {seed}", "meta_train.log_every = 10",
                f"TRAINED_WORKDIR = '{outer_workdir}'" if name == "learned" and outer_workdir else "",
                *([f"learned_meta_optimizer.pretrained = '{outer_pretrained}'",
                   "learned_meta_optimizer.workdir = None"] if name == "learned" and outer_pretrained else []),
                "meta_train.final_evaluation = @heldout_comparison", "heldout_comparison.num_tasks = 8",
                "heldout_comparison.num_steps = %HORIZON"]
    runs.meta_train_in_workdir(workdir, gin_configs=[os.path.join(ROOT, c) for c in configs],
                               gin_bindings=[b for b in bindings if b], wandb_mode="disabled")
    layout = Workdir(workdir)
    lines = [line for line in writers.read_jsonl(layout.metrics) if "meta_loss" in line]
    with open(layout.final_evaluation, encoding="utf-8") as f:
      heldout = json.load(f)
    results[name] = {"steps": [line["step"] for line in lines], "meta_loss": [line["meta_loss"] for line in lines],
                     "heldout": heldout}
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--outer_workdir", help="meta_train workdir of the outer learned optimizer")
  parser.add_argument("--outer_pretrained", help="or a shipped optimizer (lopt.pretrained.names()) as outer one")
  parser.add_argument("--root", default="/tmp/lopt_self_training", help="where the runs' workdirs go")
  parser.add_argument("--num_outer_steps", type=int, default=200)
  parser.add_argument("--seeds", default="0", help="comma-separated meta_train seeds")
  parser.add_argument("--out", default="/tmp/self_training.json")
  parser.add_argument("--plot", default="/tmp/self_training.png")
  compilation_cache.add_argument(parser)
  args = parser.parse_args()
  compilation_cache.enable(args.compilation_cache)
  if (args.outer_workdir is None) == (args.outer_pretrained is None):
    parser.error("give exactly one of --outer_workdir and --outer_pretrained")
  seeds = [int(s) for s in args.seeds.split(",")]
  per_seed = {seed: run_pair(args.outer_workdir, args.root, args.num_outer_steps, seed, args.outer_pretrained)
              for seed in seeds}

  print("| outer optimizer | seed | meta_loss (first 10% of steps) | meta_loss (last 10%) | held-out final loss "
        "(meta-trained) | held-out final loss (initialisation) |")
  print("|---|---|---|---|---|---|")
  summary = []
  for seed, results in per_seed.items():
    for name, r in results.items():
      losses = np.asarray(r["meta_loss"])
      tenth = max(1, len(losses) // 10)
      family = next(iter(r["heldout"]))
      rows = r["heldout"][family]
      row = {"outer": name, "seed": seed, "meta_loss_start": float(losses[:tenth].mean()),
             "meta_loss_end": float(losses[-tenth:].mean()),
             "heldout_final_loss": rows["meta-trained"]["final_train_loss"],
             "heldout_init_final_loss": rows["initialisation"]["final_train_loss"]}
      summary.append(row)
      print(f"| {name} | {seed} | {row['meta_loss_start']:.4f} | {row['meta_loss_end']:.4f} | "
            f"{row['heldout_final_loss']:.4f} | {row['heldout_init_final_loss']:.4f} |")
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump({"outer_workdir": args.outer_workdir, "outer_pretrained": args.outer_pretrained,
               "num_outer_steps": args.num_outer_steps, "summary": summary,
               "curves": {str(s): {n: {"steps": r["steps"], "meta_loss": r["meta_loss"]} for n, r in res.items()}
                          for s, res in per_seed.items()}}, f, indent=1)
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for seed, results in per_seed.items():
    for name, r in results.items():
      ax.plot(r["steps"], r["meta_loss"], label=f"{name} outer (seed {seed})", color="C0" if name == "adam" else "C1",
              alpha=0.8)
  ax.set_xlabel("outer step")
  ax.set_ylabel("meta-loss (PES, normalised)")
  ax.set_title("ff on 4-d quadratics: Adam vs a meta-trained outer optimizer")
  ax.legend()
  fig.tight_layout()
  fig.savefig(args.plot, dpi=80)
  print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
  main()
