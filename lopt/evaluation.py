"""Training tasks with any optax optimizer, and the held-out comparison printed after meta-training.

Held-out tasks are drawn from a key stream that meta-training never uses (``HELDOUT_SEED_OFFSET``), and scored on
the test split, which no estimator reads.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.architectures.base import LearnedOptimizer
from lopt.tasks.base import TaskFamily, TaskSampler
from lopt.types import MetaParams, PRNGKey

HELDOUT_SEED_OFFSET = 1_000_003

OptimizerFactory = Callable[[int], optax.GradientTransformationExtraArgs]


def train_tasks(family: TaskFamily, make_optimizer: OptimizerFactory, key: PRNGKey, *, num_tasks: int,
                num_steps: int, num_eval_batches: int = 4) -> dict[str, np.ndarray]:
  """Trains ``num_tasks`` tasks sampled from ``family`` for ``num_steps`` steps each (vmapped, one compile).

  Args:
    family: where tasks come from.
    make_optimizer: ``num_steps -> optax transformation``; its ``update`` receives ``loss=`` as a keyword.
    key: selects the tasks, their initialisations and data.
    num_tasks: tasks trained in parallel.
    num_steps: inner steps per task.
    num_eval_batches: test-split batches averaged for the final test loss.

  Returns:
    ``train_loss`` (num_tasks, num_steps) normalised training losses, ``test_loss`` (num_tasks,) normalised
    final test losses and, for classification families, ``test_accuracy`` (num_tasks,).
  """
  tx = make_optimizer(num_steps)

  def one_task(task_key):
    cfg_key, init_key, data_key, eval_key = jax.random.split(task_key, 4)
    cfg = family.sample(cfg_key)
    task = family.task(cfg)
    params = task.init(init_key)

    def step(carry, k):
      params, opt_state = carry
      batch_key, loss_key = jax.random.split(k)
      loss, grads = jax.value_and_grad(task.loss)(params, loss_key, task.batch(batch_key, "train"))
      updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
      return (optax.apply_updates(params, updates), opt_state), task.normalize(loss)

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(data_key, num_steps))
    eval_batches = [task.batch(k, "test") for k in jax.random.split(eval_key, num_eval_batches)]
    test_loss = jnp.mean(jnp.stack([task.normalize(task.loss(params, eval_key, b)) for b in eval_batches]))
    out = {"train_loss": losses, "test_loss": test_loss}
    if task.accuracy is not None:
      out["test_accuracy"] = jnp.mean(jnp.stack([task.accuracy(params, b) for b in eval_batches]))
    return out

  result = jax.jit(jax.vmap(one_task))(jax.random.split(key, num_tasks))
  return {k: np.asarray(v) for k, v in result.items()}


def _summary(result: Mapping[str, np.ndarray]) -> dict[str, float]:
  train = np.nan_to_num(result["train_loss"], nan=np.inf)
  summary = {"mean_train_loss": float(np.mean(train)), "final_train_loss": float(np.mean(train[:, -1])),
             "test_loss": float(np.mean(result["test_loss"]))}
  if "test_accuracy" in result:
    summary["test_accuracy"] = float(np.mean(result["test_accuracy"]))
  return summary


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
  """A markdown table with one row per optimizer."""
  columns = list(next(iter(rows.values())))
  lines = ["| optimizer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  for name, row in rows.items():
    lines.append(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + " |")
  return "\n".join(lines)


def heldout_comparison(*, theta: MetaParams, init_theta: MetaParams, architecture: LearnedOptimizer,
                       task_sampler: TaskSampler, workdir: str | None = None, seed: int = 0, num_tasks: int = 8,
                       num_steps: int = 200, adam_learning_rate: float = 1e-3) -> dict[str, dict[str, float]]:
  """Compares the meta-trained optimizer, its initialisation and Adam on held-out tasks of every family.

  Prints a markdown table (lower losses are better) and writes ``workdir/final_evaluation.json``.

  Returns:
    ``{family name: {optimizer name: summary}}``.
  """
  optimizers: dict[str, OptimizerFactory] = {
      "meta-trained": lambda n: architecture.optimizer(theta, num_steps=n),
      "initialisation": lambda n: architecture.optimizer(init_theta, num_steps=n),
      f"adam({adam_learning_rate:g})": lambda n: optax.with_extra_args_support(optax.adam(adam_learning_rate)),
  }
  key = jax.random.key(seed + HELDOUT_SEED_OFFSET)
  report = {}
  for i, family in enumerate(task_sampler.families):
    family_key = jax.random.fold_in(key, i)
    rows = {name: _summary(train_tasks(family, make, family_key, num_tasks=num_tasks, num_steps=num_steps))
            for name, make in optimizers.items()}
    report[family.name] = rows
    table = format_table(rows)
    header = f"Held-out comparison on {family.name}: {num_tasks} tasks x {num_steps} steps (normalised losses)"
    print(f"\n{header}\n{table}\n", flush=True)
  if workdir is not None:
    with open(os.path.join(workdir, "final_evaluation.json"), "w") as f:
      json.dump(report, f, indent=2)
  return report
