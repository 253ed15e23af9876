"""Two processes on localhost (jax.distributed, gloo collectives) meta-train like one process, write once, resume.

Each process of the pair has one CPU device and feeds one of the two tasks. The pair runs two steps; in a second
test it runs one step, stops, resumes
(each process restores the checkpoint and places its shard) and runs a second (marked slow); the result must match
the same run in one process on one device.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from flax import serialization

from lopt import checkpoints, writers
from lopt.architectures import ff
from lopt.meta_trainers import outer_loop, pes
from lopt.tasks import fixed, quadratic
from meta_train_cli import SCRIPT, TINY_RUN_BINDINGS

BINDINGS = TINY_RUN_BINDINGS + [
    "meta_train.estimator = @estimators.pes()",
    "estimators.pes.num_tasks = 2",
    "estimators.pes.truncation_length = 4",
    "estimators.pes.horizon = 16",
    "meta_train.log_every = 1",
    "meta_train.checkpoint_every = 1",
]
# The pair sums the two tasks' contributions with a cross-process all-reduce, the reference on one device: the
# float32 results may differ in the last bits, which Adam's first steps (update ~ lr * sign) barely amplify.
RTOL, ATOL = 1e-5, 1e-7


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _command(workdir, num_steps, *extra):
  return [sys.executable, SCRIPT, f"--workdir={workdir}", "--wandb_mode=disabled", *extra,
          *[f"--gin_bindings={b}" for b in BINDINGS + [f"meta_train.num_outer_steps = {num_steps}"]]]


def _env(devices):
  # Keeps the caller's XLA flags (conftest.py's optimisation level), so the processes compile what the
  # in-process reference compiles.
  flags = os.environ.get("XLA_FLAGS", "")
  return dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip())


def _run_pair(workdir, num_steps):
  """Runs two processes of one job; returns their stderr."""
  address = f"localhost:{_free_port()}"
  procs = [subprocess.Popen(_command(workdir, num_steps, f"--coordinator_address={address}", "--num_processes=2",
                                     f"--process_id={i}"), env=_env(1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  logs = []
  for proc in procs:
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    logs.append(err)
  return logs


def _checkpoint(workdir, step):
  with open(checkpoints.checkpoint_path(os.path.join(workdir, "checkpoints"), step), "rb") as f:
    return serialization.msgpack_restore(f.read())


def _leaves(tree):
  if isinstance(tree, dict):
    return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
  return [np.asarray(tree)]


def _reference(workdir, num_steps):
  """The same run in this process, on one device."""
  return outer_loop.meta_train(
      task_sampler=fixed(quadratic(dim=4)), architecture=ff.ff(hidden_sizes=(8,)),
      estimator=pes.pes(num_tasks=2, truncation_length=4, horizon=16), num_outer_steps=num_steps,
      workdir=workdir, wandb_mode="disabled", log_every=1, checkpoint_every=1, handle_signals=False)


def _assert_same_state(pair_dir, single_dir, step):
  got, want = _checkpoint(pair_dir, step), _checkpoint(single_dir, step)
  assert int(got["step"]) == step
  got_leaves, want_leaves = _leaves(got), _leaves(want)
  assert len(got_leaves) == len(want_leaves) > 0
  for a, b in zip(got_leaves, want_leaves):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def _assert_split_and_written_once(logs):
  assert "Splitting 2 tasks over 2 cpu device(s) of 2 (1 per device, 2 process(es))" in logs[1]
  # Only process 0 writes checkpoints (one per step here).
  assert [log.count("Wrote checkpoint") for log in logs][1] == 0 and logs[0].count("Wrote checkpoint") >= 1


def test_two_processes_match_one_process_and_write_once(tmp_path):
  pair, single = str(tmp_path / "pair"), str(tmp_path / "single")
  logs = _run_pair(pair, 2)
  _reference(single, 2)
  _assert_split_and_written_once(logs)
  assert [log.count("Wrote checkpoint") for log in logs] == [2, 0]
  assert [r["step"] for r in writers.read_jsonl(os.path.join(pair, "metrics.jsonl"))] == [1, 2]
  assert os.path.exists(os.path.join(pair, "config.gin"))
  _assert_same_state(pair, single, 2)


@pytest.mark.slow
def test_two_processes_resume_from_a_checkpoint(tmp_path):
  pair, single = str(tmp_path / "pair"), str(tmp_path / "single")
  _run_pair(pair, 1)
  logs = _run_pair(pair, 2)  # every process restores the step-1 checkpoint and places its shard
  _reference(single, 2)
  _assert_split_and_written_once(logs)
  assert "Resuming from step 1" in logs[0] and "Resuming from step 1" in logs[1]
  assert [r["step"] for r in writers.read_jsonl(os.path.join(pair, "metrics.jsonl"))] == [1, 2]
  _assert_same_state(pair, single, 2)
