"""A shipped optimizer over long runs: training-loss spikes, final and test losses against the peak learning rate
and weight decay, on `validation` suite tasks (never `heldout`: this is for choosing what to change).

  python benchmarks/long_horizon.py --name=celo2_v1 --tasks=image_mlp_4x32,autoencoder_128x16 \
      --steps=500,5000 --learning_rates=3e-3,1e-3 --weight_decays=0 --output=/tmp/long_horizon.json

Each row trains ``--seeds`` tasks of one suite entry for ``steps`` steps with the shipped theta and the
architecture's settings from the manifest, overriding ``learning_rate`` (the schedule's peak) and
``weight_decay``. Printed per row: the final training loss (mean of the last 5% of steps), the largest training
loss seen (normalised, so 1 is the loss at initialisation: a value far above 1 is a spike), the test loss and
accuracy, and the wall time of the row (compile included).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np


def _row(pretrained, kwargs, family, *, steps: int, seeds: int, learning_rate: float, weight_decay: float) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from lopt import registry  # pylint: disable=import-outside-toplevel
  from lopt.evaluation import training  # pylint: disable=import-outside-toplevel

  make = registry.lookup("architecture", pretrained.entry["architecture"])
  arch = make(**{**kwargs, "learning_rate": learning_rate, "weight_decay": weight_decay})
  start = time.time()
  out = training.train_tasks(family, lambda n: arch.optimizer(pretrained.theta, num_steps=n), jax.random.key(0),
                             num_tasks=seeds, num_steps=steps)
  train = np.asarray(out["train_loss"])
  row = {"final_train_loss": float(np.mean(train[:, -max(1, steps // 20):])), "max_train_loss": float(np.max(train)),
         "test_loss": float(np.mean(out["test_loss"])), "seconds": time.time() - start}
  if "test_accuracy" in out:
    row["test_accuracy"] = float(np.mean(out["test_accuracy"]))
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--name", default="celo2_v1", help="A shipped optimizer (lopt.pretrained.names()).")
  parser.add_argument("--suite", default="validation", help="Eval suite the tasks come from.")
  parser.add_argument("--tasks", default="image_mlp_4x32,image_mlp_128x32_tanh,autoencoder_128x16")
  parser.add_argument("--steps", default="500,5000", help="Comma-separated run lengths.")
  parser.add_argument("--learning_rates", default="3e-3,1e-3", help="Comma-separated schedule peaks.")
  parser.add_argument("--weight_decays", default="0", help="Comma-separated decoupled weight decays.")
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--output", default=None, help="JSON file for the rows.")
  args = parser.parse_args()

  import lopt  # pylint: disable=import-outside-toplevel
  from lopt.evaluation import suites  # pylint: disable=import-outside-toplevel

  pretrained = lopt.pretrained.load(args.name)
  kwargs = dict(pretrained.entry["kwargs"])
  if "weight_decay" not in kwargs or "learning_rate" not in kwargs:
    parser.error(f"{args.name} ({pretrained.entry['architecture']}) has no learning_rate and weight_decay settings")
  suite = suites.get_suite(args.suite)
  tasks = args.tasks.split(",")
  unknown = [t for t in tasks if t not in suite]
  if unknown:
    parser.error(f"not in the {args.suite} suite: {unknown}; its tasks: {sorted(suite)}")
  grid = itertools.product(tasks, [int(s) for s in args.steps.split(",")],
                           [float(x) for x in args.learning_rates.split(",")],
                           [float(x) for x in args.weight_decays.split(",")])
  rows = []
  print("| task | steps | peak lr | weight decay | final train | max train | test | test acc | s |")
  print("|---|---|---|---|---|---|---|---|---|")
  for task, steps, lr, wd in grid:
    row = {"task": task, "steps": steps, "learning_rate": lr, "weight_decay": wd,
           **_row(pretrained, kwargs, suite[task], steps=steps, seeds=args.seeds, learning_rate=lr, weight_decay=wd)}
    rows.append(row)
    acc = f"{row['test_accuracy']:.3f}" if "test_accuracy" in row else "-"
    print(f"| {task} | {steps} | {lr:g} | {wd:g} | {row['final_train_loss']:.3g} | {row['max_train_loss']:.3g} | "
          f"{row['test_loss']:.3g} | {acc} | {row['seconds']:.0f} |", flush=True)
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump({"name": args.name, "suite": args.suite, "seeds": args.seeds, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
