"""Many task structures, one compiled program: compile time, PES throughput and peak memory against the number of
distinct structures, for a structure-polymorphic family and for today's one-program-per-structure path.

  python benchmarks/structures.py --output=/tmp/structures.json

Polymorphic path: ``mlp_structures`` (MLP classifiers of 1-3 hidden layers of 4-32 units on digits, wine or breast
cancer, batch 8-64, four activations, padded to the largest) restricted to a pool of S distinct structures drawn
once (S = 1, 16, 256, 4096); every task the estimator (re)starts draws a structure from the pool inside ``jit``.
Baseline path: S distinct ``image_mlp`` families (hidden widths 8, 12, 16, ...), one compiled meta-step and one
estimator state each, the meta-step cycling over them as ``meta_train`` does; it is measured for S = 1 and 4 and
its compile time extrapolated linearly to 16, 256 and 4,096 (each structure compiles its own program).

Both run ``meta_train``'s jitted meta-step (``outer_loop.make_meta_step``) with PES, the ``ff`` learned optimizer
(8x8), 8 tasks, K = 10, horizon 20 (tasks restart, with a fresh structure, every other meta-step). Each
configuration runs in its own subprocess with jax's persistent compilation cache off, so that its compile seconds
and peak RSS (``ru_maxrss``) are its own. "Compile s" is the first meta-step call of every program (trace, compile,
run once); "steps/s" is outer steps per second, the median over timed calls.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

NUM_TASKS, TRUNCATION, HORIZON = 8, 10, 20
POLYMORPHIC_COUNTS = (1, 16, 256, 4096)
BASELINE_COUNTS = (1, 4)


def _pool_family(count: int):
  """``mlp_structures`` whose ``sample`` draws from a fixed pool of ``count`` distinct structures."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from lopt.tasks import TaskFamily, polymorphic  # pylint: disable=import-outside-toplevel

  base = polymorphic.mlp_structures()
  rng = np.random.default_rng(0)
  pool, seen = [], set()
  while len(pool) < count:
    cfg = jax.tree.map(np.asarray, base.sample(jax.random.key(int(rng.integers(2**31)))))
    structure = tuple(tuple(np.ravel(v[:cfg["depth"]] if k == "widths" else v).tolist())
                      for k, v in sorted(cfg.items()) if k != "init_scale")
    if structure not in seen:
      seen.add(structure)
      pool.append(cfg)
  stacked = {k: jnp.asarray(np.stack([c[k] for c in pool])) for k in pool[0] if k != "init_scale"}

  def sample(key):
    pick_key, cfg_key = jax.random.split(key)
    index = jax.random.randint(pick_key, (), 0, count)
    return dict(base.sample(cfg_key), **{k: v[index] for k, v in stacked.items()})

  return TaskFamily(name=f"{base.name}_pool{count}", sample=sample, task=base.task, num_structures=count)


def _child(args) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_enable_compilation_cache", False)
  from lopt.architectures import ff  # pylint: disable=import-outside-toplevel
  from lopt.meta_trainers import outer_loop, pes, sharding  # pylint: disable=import-outside-toplevel
  from lopt.tasks import image_mlp  # pylint: disable=import-outside-toplevel

  path, count = args.child.split(":")
  count = int(count)
  arch = ff.ff(hidden_sizes=(8, 8), initial_step=1e-3)
  estimator = pes.pes(num_tasks=NUM_TASKS, truncation_length=TRUNCATION, horizon=HORIZON, std=0.01)
  meta_optimizer = outer_loop.default_meta_optimizer(3e-3)
  placement = sharding.Placement(sharding.task_mesh(1))
  if path == "polymorphic":
    families = [_pool_family(count)]
  else:
    families = [image_mlp(hidden_sizes=(8 + 4 * i,), batch_size=32) for i in range(count)]
  theta = placement.place(arch.init(jax.random.key(0)), placement.replicated)
  opt_state = placement.place(meta_optimizer.init(theta), placement.replicated)
  programs = []
  for i, family in enumerate(families):
    state = estimator.init(theta, jax.random.key(1 + i), task_family=family, learned_optimizer=arch)
    shardings = placement.task_sharded(state, estimator.task_axes(state))
    step = outer_loop.make_meta_step(estimator, family, arch, meta_optimizer, placement, shardings)
    programs.append([step, placement.place(state, shardings)])
  key = np.asarray(jax.random.key_data(jax.random.key(2)))
  compile_s = 0.0
  for i, program in enumerate(programs):  # the first call of each program compiles it
    start = time.perf_counter()
    theta, opt_state, program[1], metrics = program[0](theta, opt_state, program[1], key + np.uint32(i))
    jax.block_until_ready((theta, program[1], metrics))
    compile_s += time.perf_counter() - start
  times = []
  for i in range(args.calls):
    program = programs[i % len(programs)]
    start = time.perf_counter()
    theta, opt_state, program[1], metrics = program[0](theta, opt_state, program[1], key + np.uint32(100 + i))
    jax.block_until_ready((theta, program[1], metrics))
    times.append(time.perf_counter() - start)
  return {"path": path, "structures": count, "programs": len(programs), "compile_s": compile_s,
          "median_call_s": float(np.median(times)), "steps_per_s": 1.0 / float(np.median(times)),
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
          "meta_loss": float(metrics["meta_loss"]), "load_average": os.getloadavg()[0]}


def _run_child(path: str, count: int, calls: int) -> dict:
  env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
  command = [sys.executable, os.path.abspath(__file__), f"--child={path}:{count}", f"--calls={calls}"]
  proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"{path} with {count} structures failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--structures", default=",".join(map(str, POLYMORPHIC_COUNTS)),
                      help="comma-separated numbers of distinct structures for the polymorphic path")
  parser.add_argument("--baseline", default=",".join(map(str, BASELINE_COUNTS)),
                      help="comma-separated numbers of structures for the one-program-per-structure path")
  parser.add_argument("--calls", type=int, default=20, help="timed meta-steps per configuration")
  parser.add_argument("--output", default="", help="write the results as JSON here")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(_child(args)))
    return

  rows = []
  for path, counts in (("polymorphic", args.structures), ("per_structure", args.baseline)):
    for count in (int(c) for c in counts.split(",") if c):
      rows.append(_run_child(path, count, args.calls))
      r = rows[-1]
      print(f"{path} {count}: compile {r['compile_s']:.1f} s, {r['steps_per_s']:.2f} steps/s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
  base = [r for r in rows if r["path"] == "per_structure"]
  per_program = float(np.mean([r["compile_s"] / r["programs"] for r in base])) if base else float("nan")
  extrapolated = {str(n): n * per_program for n in POLYMORPHIC_COUNTS}
  one = next((r for r in rows if r["path"] == "polymorphic" and r["structures"] == 1), None)
  print(f"\nPES, ff (8x8), {NUM_TASKS} tasks, K={TRUNCATION}, horizon {HORIZON}; {os.cpu_count()} CPU cores")
  print(f"{'path':>14}{'structures':>12}{'programs':>10}{'compile s':>11}{'x one':>7}{'steps/s':>9}{'x one':>7}"
        f"{'peak RSS MB':>13}{'x one':>7}")
  for r in rows:
    ratios = ((r["compile_s"] / one["compile_s"], r["steps_per_s"] / one["steps_per_s"],
               r["peak_rss_mb"] / one["peak_rss_mb"]) if one else (float("nan"),) * 3)
    print(f"{r['path']:>14}{r['structures']:>12,}{r['programs']:>10,}{r['compile_s']:>11.1f}{ratios[0]:>7.2f}"
          f"{r['steps_per_s']:>9.2f}{ratios[1]:>7.2f}{r['peak_rss_mb']:>13.0f}{ratios[2]:>7.2f}")
  for n, seconds in extrapolated.items():
    print(f"{'per_structure':>14}{int(n):>12,}{int(n):>10,}{seconds:>11.0f}  (extrapolated: {per_program:.1f} s "
          "per structure)")
  results = {"num_tasks": NUM_TASKS, "truncation_length": TRUNCATION, "horizon": HORIZON, "calls": args.calls,
             "cpu_count": os.cpu_count(), "rows": rows,
             "per_structure_compile_s_extrapolated": extrapolated}
  if args.output:
    with open(args.output, "w") as f:
      json.dump(results, f, indent=2)
    print(f"\nWrote {args.output}")


if __name__ == "__main__":
  main()
