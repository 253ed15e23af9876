"""Bias and variance of every estimator against exact gradients, and the drift of truncated-ES pairs.

  python benchmarks/estimator_accuracy.py --output=/tmp/estimator_accuracy.json

Accuracy: on the harness of ``tests/estimator_harness.py`` (noisy 4-d quadratics, a per-coordinate step size and
momentum as theta, T = 20, K = 5), each estimator is averaged over one episode of N tasks and compared, leaf by
leaf, with the exact full-horizon gradient and with the exact truncated (K-step) gradient on the same tasks; the
table gives the worst leaf's cosine and relative error, averaged over ``--seeds``. An unbiased estimator's error
shrinks about as 1/sqrt(N) against the full-horizon gradient; a truncated one plateaus there (its bias) and
converges to the truncated gradient instead.

Drift: truncated ES with pairs whose + and - states persist separately (lopt 0.1) against pairs that start every
truncation from one shared state (lopt 0.2), both at fixed theta over ``--truncations`` successive truncations: the
standard deviation over tasks of L+ - L- at each truncation index.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import estimator_harness as harness  # noqa: E402  pylint: disable=wrong-import-position
from lopt import compilation_cache  # noqa: E402  pylint: disable=wrong-import-position
from lopt.meta_trainers import antithetic, es, pes, tbptt  # noqa: E402  pylint: disable=wrong-import-position
from lopt.meta_trainers.truncation import Truncation  # noqa: E402  pylint: disable=wrong-import-position

C = dict(truncation_length=harness.TRUNCATION, horizon=harness.HORIZON, stagger=False)


def _fresh_es_tasks(estimator, seed):
  settings, _ = estimator.settings
  key = jax.random.split(jax.random.fold_in(jax.random.key(seed + 1), 0), 3)[0]
  return antithetic.init_slots(harness.theta0(), key, settings.episodes, num_tasks=estimator.num_tasks, copies=1,
                               stagger=False, **harness.KW)


# name -> (factory of N, number of estimates (None: one episode), the tasks it starts from)
ESTIMATORS = {
    "pes": (lambda n: pes.pes(num_tasks=n, **C), None, lambda e, s, seed: jax.tree.map(lambda x: x[0], s.inner)),
    "es_full": (lambda n: es.es(num_tasks=n, full_horizon=True, **C), 1, lambda e, s, seed: _fresh_es_tasks(e, seed)),
    "es_truncated": (lambda n: es.es(num_tasks=n, **C), None, lambda e, s, seed: s.inner),
    "tbptt": (lambda n: tbptt.tbptt(num_tasks=n, **C), None, lambda e, s, seed: s),
}


def accuracy(task_counts, seeds) -> list[dict]:
  rows = []
  for name, (make, num_estimates, start_of) in ESTIMATORS.items():
    for n in task_counts:
      stats = {k: [] for k in ("cos_full", "rel_full", "cos_truncated", "rel_truncated")}
      for seed in seeds:
        estimator = make(n)
        estimate, init_state = harness.episode_mean(estimator, seed, num_estimates)
        start = start_of(estimator, init_state, seed)
        for ref, fn in (("full", harness.full_horizon_gradient), ("truncated", harness.truncated_gradient)):
          exact = fn(start)
          stats[f"cos_{ref}"].append(min(harness.leaf_cosines(estimate, exact).values()))
          stats[f"rel_{ref}"].append(max(harness.leaf_rel_errors(estimate, exact).values()))
      row = {"estimator": name, "num_tasks": n, **{k: float(np.mean(v)) for k, v in stats.items()}}
      print(json.dumps(row), flush=True)
      rows.append(row)
  return rows


def drift(num_tasks: int, num_truncations: int, std: float, seed: int = 0) -> dict[str, list[float]]:
  """Std over tasks of L+ - L- per truncation index, for persistent (drifting) and shared-start pairs."""
  settings = Truncation(num_tasks=num_tasks, truncation_length=harness.TRUNCATION,
                        horizon=harness.TRUNCATION * num_truncations, stagger=False)
  perturbation = antithetic.Perturbation(std=std)
  theta = harness.theta0()
  step = jax.jit(lambda inner, eps, key: antithetic.truncation_step(settings, perturbation, theta, inner, eps, eps,
                                                                    key, copies=1, **harness.KW))
  slots = antithetic.init_slots(theta, jax.random.key(seed), settings.episodes, num_tasks=num_tasks, copies=1,
                                stagger=False, **harness.KW)
  out = {"drifting_pairs": [], "shared_start": []}
  for mode in out:
    state = antithetic.both_signs(slots) if mode == "drifting_pairs" else slots
    for j in range(num_truncations):
      key = jax.random.fold_in(jax.random.key(seed + 1), j)
      eps = antithetic.tree_normal(jax.random.fold_in(key, 0), theta, std, num_tasks)
      pairs = state if mode == "drifting_pairs" else antithetic.both_signs(state)
      _, pairs, _, metrics = step(pairs, eps, jax.random.fold_in(key, 1))
      state = pairs if mode == "drifting_pairs" else jax.tree.map(lambda x: x[0], pairs)
      out[mode].append(float(metrics["loss_diff_std"]))
  return out


def _markdown(rows, drifts) -> str:
  lines = ["| estimator | tasks | min leaf cosine (full) | max leaf rel. error (full) | min leaf cosine (K-step) "
           "| max leaf rel. error (K-step) |", "|---|---|---|---|---|---|"]
  lines += [f"| `{r['estimator']}` | {r['num_tasks']} | {r['cos_full']:.3f} | {r['rel_full']:.2f} | "
            f"{r['cos_truncated']:.3f} | {r['rel_truncated']:.2f} |" for r in rows]
  for std, d in drifts.items():
    n = len(d["drifting_pairs"])
    idx = sorted({0, 1, n // 4, n // 2, n - 1})
    lines += ["", f"std(L+ - L-) over tasks at truncation index (std = {std}):", "",
              "| pairs | " + " | ".join(str(i) for i in idx) + " |", "|---|" + "---|" * len(idx)]
    lines += [f"| {mode} | " + " | ".join(f"{d[mode][i]:.2e}" for i in idx) + " |" for mode in d]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--task_counts", default="64,256,1024")
  parser.add_argument("--seeds", default="1,2")
  parser.add_argument("--drift_tasks", type=int, default=1024)
  parser.add_argument("--truncations", type=int, default=40)
  parser.add_argument("--stds", default="0.01,0.1")
  parser.add_argument("--output", default=None)
  compilation_cache.add_argument(parser)
  args = parser.parse_args(argv)
  compilation_cache.enable(args.compilation_cache)
  rows = accuracy([int(n) for n in args.task_counts.split(",")], [int(s) for s in args.seeds.split(",")])
  drifts = {float(s): drift(args.drift_tasks, args.truncations, float(s)) for s in args.stds.split(",")}
  print(_markdown(rows, drifts))
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump({"command": " ".join(["python", "benchmarks/estimator_accuracy.py", *(argv or sys.argv[1:])]),
                 "accuracy": rows, "drift": {str(k): v for k, v in drifts.items()}}, f, indent=1)


if __name__ == "__main__":
  main()
