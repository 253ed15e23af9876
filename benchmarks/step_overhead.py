"""Optimizer step overhead: one jitted training step of a ~1M-parameter MLP with each optimizer, relative to Adam.

  python benchmarks/step_overhead.py --repeats=30 --out=/tmp/step_overhead.json

Entries of ``--optimizers`` are registered architecture names, optionally with factory arguments after a colon,
e.g. ``--optimizers=adam,ff,ff:hidden_sizes=(32,32)``. A bare name is the architecture at its default
configuration, the one users get (``ff``: an 8x8 per-parameter MLP).

A step is forward, backward and optimizer update of a 784-1024-256-10 MLP (1.07M parameters) at batch 128. Each
optimizer is timed as the median of ``--repeats`` runs after warm-up; ``optax.adam`` is timed in the same run
(interleaved rounds, so load from other processes affects every optimizer alike) and every time is reported as a
ratio to it. ``state_floats_per_param`` counts the optimizer state's scalars per model parameter;
``compile_s`` is the first call (compilation plus one step).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import time


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from lopt import compilation_cache, registry  # noqa: E402
import lopt.architectures  # noqa: E402,F401  registers every architecture.

SIZES = (784, 1024, 256, 10)
BATCH = 128
DEFAULT_OPTIMIZERS = ("adam", "ff_small", "lstm_hyper", "per_tensor", "ff", "ff:hidden_sizes=(32,32)", "radam", "adamw",
                      "sgd_momentum")


def _init_mlp(key: jax.Array) -> dict:
  params = {}
  for i, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
    key, sub = jax.random.split(key)
    params[f"w{i}"] = jax.random.normal(sub, (n_in, n_out)) * jnp.sqrt(2.0 / n_in)
    params[f"b{i}"] = jnp.zeros((n_out,))
  return params


def _loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  for i in range(len(SIZES) - 1):
    x = x @ params[f"w{i}"] + params[f"b{i}"]
    if i < len(SIZES) - 2:
      x = jax.nn.relu(x)
  return optax.softmax_cross_entropy_with_integer_labels(x, y).mean()


def _build(entry: str):
  """``name`` or ``name:arg=value;arg=value`` (values are Python literals) -> LearnedOptimizer."""
  name, _, args = entry.partition(":")
  kwargs = {}
  for item in filter(None, args.split(";")):
    key, _, value = item.partition("=")
    kwargs[key.strip()] = ast.literal_eval(value.strip())
  return registry.lookup("architecture", name)(**kwargs)


def _make_step(tx: optax.GradientTransformationExtraArgs):
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(_loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
    return optax.apply_updates(params, updates), opt_state, loss
  return jax.jit(step, donate_argnums=(0, 1))


def _rejoin(parts: list[str]) -> list[str]:
  """Rejoins pieces of one entry that a comma inside parentheses split apart."""
  out: list[str] = []
  for part in parts:
    if out and out[-1].count("(") > out[-1].count(")"):
      out[-1] += "," + part
    else:
      out.append(part)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--optimizers", default=",".join(DEFAULT_OPTIMIZERS),
                      help="comma-separated name[:arg=value;...] entries; adam is always added")
  parser.add_argument("--repeats", type=int, default=30, help="timed rounds (the median is reported)")
  parser.add_argument("--steps_per_repeat", type=int, default=3, help="steps per timed round")
  parser.add_argument("--out", default="step_overhead.json", help="JSON output path")
  compilation_cache.add_argument(parser)
  args = parser.parse_args()
  cache_dir = compilation_cache.enable(args.compilation_cache)
  names = [n for n in args.optimizers.split(",") if n]  # a comma inside "(8,)" is rejoined below
  names = _rejoin(names)
  if "adam" not in names:
    names.insert(0, "adam")

  key = jax.random.key(0)
  params0 = _init_mlp(key)
  num_params = sum(p.size for p in jax.tree.leaves(params0))
  x = jax.random.normal(jax.random.key(1), (BATCH, SIZES[0]))
  y = jax.random.randint(jax.random.key(2), (BATCH,), 0, SIZES[-1])

  runners = {}
  for name in names:
    arch = _build(name)
    tx = arch.optimizer(arch.init(jax.random.key(3)), num_steps=10_000)
    state = tx.init(params0)
    floats = sum(np.size(s) for s in jax.tree.leaves(state))
    step = _make_step(tx)
    carry = [jax.tree.map(jnp.copy, params0), state]
    start = time.perf_counter()
    carry[0], carry[1], loss = step(carry[0], carry[1], x, y)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - start
    for _ in range(2):  # warm up
      carry[0], carry[1], loss = step(carry[0], carry[1], x, y)
    jax.block_until_ready(loss)
    runners[name] = (step, carry, floats / num_params, compile_s)

  times = {name: [] for name in names}
  for _ in range(args.repeats):
    for name in names:  # interleaved so machine load hits every optimizer alike
      step, carry = runners[name][:2]
      start = time.perf_counter()
      for _ in range(args.steps_per_repeat):
        carry[0], carry[1], loss = step(carry[0], carry[1], x, y)
      jax.block_until_ready(loss)
      times[name].append((time.perf_counter() - start) / args.steps_per_repeat)

  adam_ms = 1e3 * float(np.median(times["adam"]))
  results = []
  print(f"{num_params} parameters, batch {BATCH}, median of {args.repeats} x {args.steps_per_repeat} steps")
  print(f"{'optimizer':<26} {'ms/step':>9} {'x adam':>8} {'state floats/param':>20} {'compile s':>10}")
  for name in names:
    ms = 1e3 * float(np.median(times[name]))
    row = {"optimizer": name, "ms_per_step": ms, "ratio_to_adam": ms / adam_ms,
           "state_floats_per_param": runners[name][2], "compile_s": runners[name][3]}
    results.append(row)
    print(f"{name:<26} {ms:>9.2f} {ms / adam_ms:>8.2f} {row['state_floats_per_param']:>20.2f} "
          f"{row['compile_s']:>10.1f}")
  with open(args.out, "w") as f:
    json.dump({"num_params": int(num_params), "batch": BATCH, "repeats": args.repeats,
               "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
               "load_average": os.getloadavg(), "compilation_cache": cache_dir, "results": results}, f, indent=2)
  if cache_dir:
    print(f"(compile s: compilation, or a load from the compilation cache {cache_dir} when it holds the program; "
          "--compilation_cache=off to time compilation)")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
