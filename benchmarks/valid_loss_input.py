"""Does feeding the validation loss help `per_tensor` generalise (Metz et al. 2020)? Fed vs zeroed, several seeds.

  python benchmarks/valid_loss_input.py --seeds=0,1,2 --num_outer_steps=150 --out=/tmp/valid_loss_input.json

On a family that overfits (a 32-unit MLP on `digits_small`, 100 training images), `per_tensor` is meta-trained
with PES on the outer-validation objective (`meta_loss_split="outer_valid"`) twice per seed, identical except
that one run feeds `valid_loss` every 10 inner steps and the other never does (`valid_every=0`, the features stay
zero). Each result is then trained on held-out tasks of the family, fed as it was meta-trained, and scored by its
normalised test loss (lower is better). Prints the table and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import jax
import numpy as np

import lopt
from lopt import compilation_cache
from lopt.evaluation import training
from lopt.meta_trainers import outer_loop, pes
from lopt.tasks import fixed, image_mlp

HORIZON = 100


def one_run(seed: int, valid_every: int, num_outer_steps: int, workdir: str) -> dict[str, float]:
  family = image_mlp(hidden_sizes=(32,), dataset="digits_small", batch_size=32)
  arch = lopt.registry.lookup("architecture", "per_tensor")()
  result = outer_loop.meta_train(
      task_sampler=fixed(family), architecture=arch,
      estimator=pes.pes(num_tasks=8, truncation_length=10, horizon=HORIZON, std=0.01,
                        meta_loss_split="outer_valid", valid_every=valid_every),
      meta_optimizer=outer_loop.default_meta_optimizer(learning_rate=3e-3), num_outer_steps=num_outer_steps,
      seed=seed, workdir=workdir, wandb_mode="disabled", log_every=max(1, num_outer_steps // 5),
      checkpoint_every=num_outer_steps, handle_signals=False)
  scores = training.train_tasks(family, lambda n: arch.optimizer(result.theta, num_steps=n),
                                jax.random.key(training.HELDOUT_SEED_OFFSET + seed), num_tasks=16,
                                num_steps=HORIZON, valid_every=valid_every)
  return {"test_loss": float(np.mean(scores["test_loss"])), "final_train_loss": float(np.mean(
      scores["train_loss"][:, -10:])), "meta_loss": float(result.metrics.get("meta_loss", float("nan")))}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--num_outer_steps", type=int, default=150)
  parser.add_argument("--out", default="/tmp/valid_loss_input.json")
  compilation_cache.add_argument(parser)
  args = parser.parse_args()
  compilation_cache.enable(args.compilation_cache)
  rows = []
  for seed in (int(s) for s in args.seeds.split(",")):
    for name, valid_every in (("fed", 10), ("zeroed", 0)):
      with tempfile.TemporaryDirectory() as workdir:
        row = {"seed": seed, "input": name, **one_run(seed, valid_every, args.num_outer_steps, workdir)}
      rows.append(row)
      print(row, flush=True)
  print("\n| seed | valid_loss input | held-out test loss | held-out final train loss |\n|---|---|---|---|")
  for row in rows:
    print(f"| {row['seed']} | {row['input']} | {row['test_loss']:.4f} | {row['final_train_loss']:.4f} |")
  fed = np.array([r["test_loss"] for r in rows if r["input"] == "fed"])
  zeroed = np.array([r["test_loss"] for r in rows if r["input"] == "zeroed"])
  print(f"\nmean test loss: fed {fed.mean():.4f}, zeroed {zeroed.mean():.4f}; fed lower on "
        f"{int(np.sum(fed < zeroed))} of {len(fed)} seeds")
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump({"num_outer_steps": args.num_outer_steps, "horizon": HORIZON, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
