"""Meta-training throughput: inner steps per second of each gradient estimator, relative to plain optax.adam.

  python benchmarks/meta_throughput.py --output=/tmp/meta_throughput.json

Two task families: a 10-dimensional quadratic and a 64-32-10 MLP on scikit-learn's 8x8 digits at batch 128. Every
estimator trains 8 tasks with truncations of 10 steps (horizon 200) and the ``ff`` learned optimizer. An *inner
step* is one forward/backward/update of one task copy, so an antithetic estimator does 2 per task per step and
full-horizon ES does 2 x 200 per task per estimate. Baselines in the same run: ``adam`` (optax.adam on the same 8
tasks, the ratio's denominator), ``ff_plain`` (the ff optimizer stepping 16 problems in one jitted loop, no
estimator: the reference implementation's "plain loop" comparison) and ``ff_plain_perturbed`` (the same, but each
problem with its own perturbed theta, as an antithetic estimator needs). Methods are timed in interleaved rounds
(median call time), so load from other processes affects them alike.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time


# Forced host devices must be set before jax starts; parse that one flag early.
_DEVICES = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--host_devices=")), 1)
if _DEVICES > 1:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={_DEVICES}")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lopt import compilation_cache  # noqa: E402
from lopt.architectures import baselines, ff  # noqa: E402
from lopt.meta_trainers import antithetic, combined, es, pes, tbptt  # noqa: E402
from lopt.meta_trainers import unroll as unroll_lib  # noqa: E402
from lopt.tasks import image_mlp, quadratic  # noqa: E402

NUM_TASKS, TRUNCATION, HORIZON = 8, 10, 200


def _shard_tasks(state, num_tasks: int):
  """Splits every leaf along its first axis of length ``num_tasks`` over the host devices (GSPMD does the rest)."""
  devices = jax.devices()
  if len(devices) == 1:
    return state
  mesh = jax.sharding.Mesh(np.array(devices), ("tasks",))

  def place(x):
    shape = np.shape(x)
    axes = [i for i, n in enumerate(shape) if n == num_tasks and n % len(devices) == 0]
    if not axes or not hasattr(x, "dtype") or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    spec = [None] * len(shape)
    spec[axes[0]] = "tasks"
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec)))

  return jax.tree.map(place, state)


def _families():
  return {"quadratic_d10": quadratic(dim=10),
          "image_mlp_64-64-32-10_digits_b128": image_mlp(hidden_sizes=(64, 32), batch_size=128)}


def _estimators():
  kw = dict(num_tasks=NUM_TASKS, truncation_length=TRUNCATION, horizon=HORIZON)
  return {
      "tbptt": (tbptt.tbptt(**kw), NUM_TASKS * TRUNCATION),
      "tbptt_no_remat": (tbptt.tbptt(**kw, remat=False), NUM_TASKS * TRUNCATION),
      "tbptt_first_order": (tbptt.tbptt(**kw, first_order=True), NUM_TASKS * TRUNCATION),
      "es": (es.es(**kw), 2 * NUM_TASKS * TRUNCATION),
      "es_full": (es.es(**kw, full_horizon=True), 2 * NUM_TASKS * HORIZON),
      "pes": (pes.pes(**kw), 2 * NUM_TASKS * TRUNCATION),
      "combined_tbptt_pes": (combined.combined(estimators=[tbptt.tbptt(**kw), pes.pes(**kw)]),
                             3 * NUM_TASKS * TRUNCATION),
  }


def _plain(arch, family, num_problems, *, perturbed: bool = False):
  """A call that steps ``num_problems`` tasks K steps with ``arch``, no estimator; and its initial state.

  With ``perturbed``, every problem is stepped with its own theta (theta plus small noise), which is what an
  antithetic estimator's 2 x num_tasks copies cost without any estimator bookkeeping. Theta is an argument of the
  jitted function, not a constant baked into it, as in meta-training where it changes every step (XLA can fold
  a constant theta into the optimizer's arithmetic, which flatters the plain loop).
  """
  theta = arch.init(jax.random.key(0))
  kw = dict(task_family=family, learned_optimizer=arch)
  state = unroll_lib.init_tasks(theta, jax.random.split(jax.random.key(1), num_problems),
                                np.full((num_problems,), HORIZON), **kw)
  if perturbed:
    theta = jax.tree.map(lambda t, n: t[None] + n, theta,
                         antithetic.tree_normal(jax.random.key(3), theta, 0.01, num_problems))

  @jax.jit
  def step(th, s, key):
    theta_axis = 0 if perturbed else None
    s, losses = jax.vmap(lambda th1, t, k: unroll_lib.unroll(th1, t, k, TRUNCATION, **kw),
                         in_axes=(theta_axis, 0, 0))(th, s, jax.random.split(key, num_problems))
    return s, losses.mean()

  return functools.partial(step, theta), _shard_tasks(state, num_problems)


def _estimator_call(estimator, arch, family):
  theta = arch.init(jax.random.key(0))
  kw = dict(task_family=family, learned_optimizer=arch)
  state = estimator.init(theta, jax.random.key(1), **kw)

  @jax.jit
  def step(th, s, key):
    grad, s, metrics = estimator.estimate(th, s, key, **kw)
    return s, (grad, metrics["meta_loss"])

  return functools.partial(step, theta), _shard_tasks(state, estimator.num_tasks)


def _timed(fn, state, key):
  start = time.perf_counter()
  state, out = fn(state, key)
  jax.block_until_ready((state, out))
  return time.perf_counter() - start, state


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
  parser.add_argument("--calls", type=int, default=5, help="timed calls per method per round")
  parser.add_argument("--estimators", default="", help="comma-separated subset (default: all)")
  parser.add_argument("--families", default="", help="comma-separated subset (default: all)")
  parser.add_argument("--host_devices", type=int, default=1,
                      help="forced host CPU devices; tasks are sharded over them (use the number of cores)")
  parser.add_argument("--output", default="", help="write the results as JSON here")
  compilation_cache.add_argument(parser)
  args = parser.parse_args()
  cache_dir = compilation_cache.enable(args.compilation_cache)

  arch = ff.ff()
  estimators = _estimators()
  if args.estimators:
    estimators = {k: v for k, v in estimators.items() if k in args.estimators.split(",")}
  families = _families()
  if args.families:
    families = {k: v for k, v in families.items() if k in args.families.split(",")}
  results = {"devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(), "jax": jax.__version__,
             "compilation_cache": cache_dir, "num_tasks": NUM_TASKS, "truncation_length": TRUNCATION,
             "horizon": HORIZON, "families": {}}
  for fam_name, family in families.items():
    methods = {"adam": (*_plain(baselines.adam(), family, NUM_TASKS), NUM_TASKS * TRUNCATION),
               "ff_plain": (*_plain(arch, family, 2 * NUM_TASKS), 2 * NUM_TASKS * TRUNCATION),
               "ff_plain_perturbed": (*_plain(arch, family, 2 * NUM_TASKS, perturbed=True),
                                      2 * NUM_TASKS * TRUNCATION)}
    for name, (estimator, steps) in estimators.items():
      methods[name] = (*_estimator_call(estimator, arch, family), steps)
    states, compile_s, times = {}, {}, {name: [] for name in methods}
    key = jax.random.key(2)
    for name, (fn, state, _) in methods.items():
      compile_s[name], states[name] = _timed(fn, state, key)  # first call: compilation
    for r in range(args.rounds):
      for name, (fn, _, _) in methods.items():
        for c in range(args.calls):
          dt, states[name] = _timed(fn, states[name], jax.random.fold_in(key, r * args.calls + c))
          times[name].append(dt)
    adam_rate = methods["adam"][2] / float(np.median(times["adam"]))
    rows = {}
    for name, (_, _, steps) in methods.items():
      rate = steps / float(np.median(times[name]))
      rows[name] = {"inner_steps_per_call": steps, "median_call_s": float(np.median(times[name])),
                    "inner_steps_per_s": rate, "ratio_to_adam": rate / adam_rate,
                    "first_call_s": compile_s[name]}
    results["families"][fam_name] = rows
    print(f"\n{fam_name}  ({NUM_TASKS} tasks, K={TRUNCATION}, T={HORIZON}, ff learned optimizer)")
    plain_rate = rows["ff_plain"]["inner_steps_per_s"]
    for row in rows.values():
      row["ratio_to_ff_plain"] = row["inner_steps_per_s"] / plain_rate
    print(f"{'method':<22}{'steps/call':>11}{'inner steps/s':>15}{'vs adam':>9}{'vs ff_plain':>12}"
          f"{'first call s':>14}")
    for name, row in rows.items():
      print(f"{name:<22}{row['inner_steps_per_call']:>11}{row['inner_steps_per_s']:>15,.0f}"
            f"{row['ratio_to_adam']:>9.2f}{row['ratio_to_ff_plain']:>12.2f}{row['first_call_s']:>14.1f}")
    for name in (n for n in rows if n.startswith("tbptt")):  # the issue-14 target: >= 0.25, compile time shown
      print(f"{name} / ff_plain = {rows[name]['ratio_to_ff_plain']:.3f} (first call incl. compile "
            f"{rows[name]['first_call_s']:.1f} s)")
  if cache_dir:
    print(f"(first call: compilation, or a load from the compilation cache {cache_dir} when it holds the "
          "program; --compilation_cache=off to time compilation)")
  if args.output:
    with open(args.output, "w") as f:
      json.dump(results, f, indent=2)
    print(f"\nWrote {args.output}")


if __name__ == "__main__":
  main()
