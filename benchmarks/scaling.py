"""Meta-training throughput as the task batch is split over 1, 2, 4 and 8 devices.

  python benchmarks/scaling.py --output=/tmp/scaling.json

Runs ``meta_train``'s jitted meta-step (estimate + outer Adam update, ``outer_loop.make_meta_step``) on the quick
start configuration: the ``ff`` learned optimizer (32x32) on a 32-unit MLP classifying 8x8 digits at batch 128,
8 tasks, truncations of K = 10 steps, horizon 200; PES and truncated ES. Each device count runs in its own
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (on a GPU or TPU host, pass
``--no_force`` to use the accelerators present instead). An *inner step* is one forward/backward/update of one
task copy: both estimators step 2 copies (theta +/- eps) per task, 160 per meta-step.

The device counts run in interleaved rounds (1, 2, 4, 8, 1, 2, ...; ``--rounds``) and each count's time is the
median over its rounds' median call times, so machine load drifting during the run hits every count alike; the
fastest call of each count is reported too (on a shared machine it is the better estimate of the unloaded time).
The ``x`` columns are relative to the first device count in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from lopt import compilation_cache


NUM_TASKS, TRUNCATION, HORIZON = 8, 10, 200
INNER_STEPS_PER_CALL = 2 * NUM_TASKS * TRUNCATION


def _child(args) -> dict:
  """Times the meta-step on ``args.child`` devices; returns the measurements."""
  import jax  # pylint: disable=g-import-not-at-top  # jax must start after XLA_FLAGS is set.
  from lopt.architectures import ff  # pylint: disable=g-import-not-at-top
  from lopt.meta_trainers import es, outer_loop, pes, sharding  # pylint: disable=g-import-not-at-top
  from lopt.tasks import image_mlp  # pylint: disable=g-import-not-at-top

  arch = ff.ff(hidden_sizes=(32, 32), initial_step=1e-3)
  family = image_mlp(hidden_sizes=(32,), batch_size=128)
  meta_optimizer = outer_loop.default_meta_optimizer(3e-3)
  kw = dict(num_tasks=NUM_TASKS, truncation_length=TRUNCATION, horizon=HORIZON, std=0.01)
  estimators = {"pes": pes.pes(**kw), "es": es.es(**kw)}
  placement = sharding.Placement(sharding.task_mesh(args.child))
  out = {"num_devices": placement.num_devices, "backend": jax.default_backend(), "estimators": {},
         "load_average_start": os.getloadavg()[0]}
  for name in args.estimators.split(","):
    estimator = estimators[name]
    theta = arch.init(jax.random.key(0))
    state = estimator.init(theta, jax.random.key(1), task_family=family, learned_optimizer=arch)
    shardings = placement.task_sharded(state, estimator.task_axes(state))
    step = outer_loop.make_meta_step(estimator, family, arch, meta_optimizer, placement, shardings)
    theta = placement.place(theta, placement.replicated)
    opt_state = placement.place(meta_optimizer.init(theta), placement.replicated)
    state = placement.place(state, shardings)
    key = np.asarray(jax.random.key_data(jax.random.key(2)))
    times, cpu_times = [], []
    for i in range(args.calls + 1):  # the first call compiles
      start, cpu_start = time.perf_counter(), time.process_time()
      theta, opt_state, state, metrics = step(theta, opt_state, state, key + np.uint32(i))
      jax.block_until_ready((theta, state, metrics))
      times.append(time.perf_counter() - start)
      cpu_times.append(time.process_time() - cpu_start)
    out["estimators"][name] = {"first_call_s": times[0], "median_call_s": float(np.median(times[1:])),
                               "min_call_s": float(np.min(times[1:])),
                               "median_cpu_s": float(np.median(cpu_times[1:]))}
  out["load_average_end"] = os.getloadavg()[0]
  return out


def _run_child(devices: int, args) -> dict:
  env = dict(os.environ)
  if not args.no_force:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
  command = [sys.executable, os.path.abspath(__file__), f"--child={devices}", f"--calls={args.calls}",
             f"--estimators={args.estimators}",
             f"--compilation_cache={compilation_cache.resolve(args.compilation_cache) or compilation_cache.OFF}"]
  proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"{devices} devices failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts")
  parser.add_argument("--estimators", default="pes,es", help="comma-separated subset of pes,es")
  parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the device counts")
  parser.add_argument("--calls", type=int, default=5, help="timed meta-steps per estimator per round")
  parser.add_argument("--no_force", action="store_true", help="use the accelerators present; no forced host devices")
  parser.add_argument("--output", default="", help="write the results as JSON here")
  parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
  compilation_cache.add_argument(parser)
  args = parser.parse_args()
  if args.child:
    compilation_cache.enable(args.compilation_cache)
    print(json.dumps(_child(args)))
    return

  counts = [int(n) for n in args.devices.split(",")]
  names = args.estimators.split(",")
  runs = {n: [] for n in counts}
  for r in range(args.rounds):
    for n in counts:
      runs[n].append(_run_child(n, args))
      print(f"round {r + 1}/{args.rounds}, {n} device(s): "
            + ", ".join(f"{e} {runs[n][-1]['estimators'][e]['median_call_s'] * 1e3:.0f} ms/step" for e in names),
            flush=True)
  rows = {}
  for n in counts:
    rows[n] = {}
    for e in names:
      call_s = float(np.median([run["estimators"][e]["median_call_s"] for run in runs[n]]))
      best_s = min(run["estimators"][e]["min_call_s"] for run in runs[n])
      cpu_s = float(np.median([run["estimators"][e]["median_cpu_s"] for run in runs[n]]))
      rows[n][e] = {"median_call_s": call_s, "inner_steps_per_s": INNER_STEPS_PER_CALL / call_s,
                    "best_call_s": best_s, "cpu_s_per_call": cpu_s,
                    "best_inner_steps_per_s": INNER_STEPS_PER_CALL / best_s,
                    "first_call_s": runs[n][0]["estimators"][e]["first_call_s"]}
  base = counts[0]
  for n in counts:
    for e in names:
      rows[n][e]["speedup"] = rows[n][e]["inner_steps_per_s"] / rows[base][e]["inner_steps_per_s"]
      rows[n][e]["best_speedup"] = rows[n][e]["best_inner_steps_per_s"] / rows[base][e]["best_inner_steps_per_s"]
  results = {"cpu_count": os.cpu_count(), "backend": runs[base][0]["backend"], "num_tasks": NUM_TASKS,
             "truncation_length": TRUNCATION, "horizon": HORIZON, "inner_steps_per_call": INNER_STEPS_PER_CALL,
             "rounds": args.rounds, "calls": args.calls,
             "load_average": [run["load_average_start"] for n in counts for run in runs[n]],
             "devices": {str(n): rows[n] for n in counts}}
  print(f"\nff on image_mlp (32) digits, {NUM_TASKS} tasks, K={TRUNCATION}, T={HORIZON}; "
        f"{os.cpu_count()} CPU cores, backend {results['backend']}")
  print("inner steps/s from the median call (and from the fastest call, less sensitive to other processes)")
  print("and the CPU time one meta-step costs, summed over threads (splitting overhead shows as growth).")
  header = "".join(f"{e + ' median':>14}{'x':>7}{e + ' best':>14}{'x':>7}{'CPU ms':>8}" for e in names)
  print(f"{'devices':>8}{header}")
  for n in counts:
    print(f"{n:>8}" + "".join(
        f"{rows[n][e]['inner_steps_per_s']:>14,.0f}{rows[n][e]['speedup']:>7.2f}"
        f"{rows[n][e]['best_inner_steps_per_s']:>14,.0f}{rows[n][e]['best_speedup']:>7.2f}"
        f"{rows[n][e]['cpu_s_per_call'] * 1e3:>8.0f}" for e in names))
  if args.output:
    with open(args.output, "w") as f:
      json.dump(results, f, indent=2)
    print(f"\nWrote {args.output}")


if __name__ == "__main__":
  main()
