"""Preemption of the real process: ``kill -9`` then resume is bit-identical; SIGTERM checkpoints and exits cleanly."""

import os
import signal
import subprocess
import sys
import time

import pytest

from lopt import checkpoints, writers
from meta_train_cli import SCRIPT, TINY_RUN_BINDINGS

BINDINGS = TINY_RUN_BINDINGS + ["meta_train.log_every = 1"]
ESTIMATORS = {
    "pes": ["meta_train.estimator = @estimators.pes()", "estimators.pes.num_tasks = 2",
            "estimators.pes.truncation_length = 5", "estimators.pes.horizon = 20"],
    "tbptt": ["meta_train.estimator = @estimators.tbptt()", "estimators.tbptt.num_tasks = 2",
              "estimators.tbptt.truncation_length = 5", "estimators.tbptt.horizon = 20"],
}


def _command(workdir, num_steps, estimator, checkpoint_every):
  bindings = BINDINGS + ESTIMATORS[estimator] + [f"meta_train.num_outer_steps = {num_steps}",
                                                 f"meta_train.checkpoint_every = {checkpoint_every}"]
  return [sys.executable, SCRIPT, f"--workdir={workdir}", "--wandb_mode=disabled",
          *[f"--gin_bindings={b}" for b in bindings]]


def _checkpoint_bytes(workdir, step):
  with open(checkpoints.checkpoint_path(os.path.join(workdir, "checkpoints"), step), "rb") as f:
    return f.read()


def _wait_for(predicate, proc, timeout=180.0):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.01)
  return False


# PES in the default run; TBPTT (whose state is the same checkpointed TaskState batch, restored by the same code)
# only with -m slow: each case starts two real processes that compile from scratch.
@pytest.mark.parametrize("estimator", [pytest.param(e, marks=[pytest.mark.slow] if e != "pes" else [])
                                       for e in sorted(ESTIMATORS)])
def test_kill_9_and_resume_is_bit_identical(tmp_path, estimator):
  num_steps = 120
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  subprocess.run(_command(straight, num_steps, estimator, 1000), check=True, capture_output=True, timeout=300)

  proc = subprocess.Popen(_command(killed, num_steps, estimator, 1), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt_dir = os.path.join(killed, "checkpoints")
  reached = _wait_for(lambda: (checkpoints.latest_step(ckpt_dir) or 0) >= num_steps // 2, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert reached and proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  killed_at = checkpoints.latest_step(ckpt_dir)
  assert killed_at < num_steps

  subprocess.run(_command(killed, num_steps, estimator, 1), check=True, capture_output=True, timeout=300)
  # Everything (theta, outer optimizer state, every inner task's state, PES accumulators) matches bit for bit.
  assert _checkpoint_bytes(killed, num_steps) == _checkpoint_bytes(straight, num_steps)
  steps = [r["step"] for r in writers.read_jsonl(os.path.join(killed, "metrics.jsonl"))]
  assert steps == list(range(1, num_steps + 1))


def test_sigterm_checkpoints_exits_cleanly_and_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  metrics = os.path.join(workdir, "metrics.jsonl")
  proc = subprocess.Popen(_command(workdir, 10**6, "pes", 10**5), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  assert _wait_for(lambda: os.path.exists(metrics) and len(writers.read_jsonl(metrics)) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-2000:]
  assert "Received SIGTERM" in stderr
  stopped_at = checkpoints.latest_step(os.path.join(workdir, "checkpoints"))
  assert stopped_at is not None and stopped_at >= 3
  assert writers.read_jsonl(metrics)[-1]["step"] == stopped_at

  subprocess.run(_command(workdir, stopped_at + 2, "pes", 10**5), check=True, capture_output=True, timeout=300)
  steps = [r["step"] for r in writers.read_jsonl(metrics)]
  assert steps == list(range(1, stopped_at + 3))
