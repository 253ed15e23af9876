"""A run directory's state is never lost or misread: unverifiable checkpoints, config changes, concurrent writers,
failed writes, duplicated or misleading metrics, finished runs, and evaluation of a damaged workdir (issue 16)."""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import gin
import pytest
from absl import logging as absl_logging

from lopt import checkpoints, config, locks, writers
from lopt.architectures import ff
from lopt.meta_trainers import masking, outer_loop
from lopt.meta_trainers import pes as pes_lib
from lopt.runs import config_check, evaluate, trained, training
from lopt.tasks import fixed, quadratic
from meta_train_cli import TINY_RUN_BINDINGS

PES = ["meta_train.estimator = @estimators.pes()", "estimators.pes.num_tasks = 2",
       "estimators.pes.truncation_length = 5", "estimators.pes.horizon = 20", "meta_train.log_every = 1",
       "meta_train.checkpoint_every = 2"]


def _run(workdir, num_outer_steps, max_loss=1000.0, **kw):
  return outer_loop.meta_train(
      task_sampler=fixed(quadratic(dim=4)), architecture=ff.ff(hidden_sizes=(8,)),
      estimator=pes_lib.pes(num_tasks=2, truncation_length=5, horizon=20, max_loss=max_loss),
      num_outer_steps=num_outer_steps, workdir=str(workdir), wandb_mode="disabled", log_every=1, checkpoint_every=2,
      **kw)


def _in_workdir(workdir, num_outer_steps, extra=()):
  return training.meta_train_in_workdir(
      str(workdir), gin_bindings=TINY_RUN_BINDINGS + PES + [f"meta_train.num_outer_steps = {num_outer_steps}",
                                                            *extra], wandb_mode="disabled")


def _steps(workdir):
  return [r["step"] for r in writers.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  """A 4-step run made by ``meta_train_in_workdir``: config.gin, checkpoints 2 and 4, metrics of steps 1-4."""
  workdir = tmp_path_factory.mktemp("base") / "run"
  gin.clear_config()
  _in_workdir(workdir, 4)
  return workdir


@pytest.fixture
def run_copy(base_run, tmp_path):
  """A private copy of ``base_run`` (most tests need a trained workdir, and compiling one costs seconds)."""
  workdir = tmp_path / "run"
  shutil.copytree(base_run, workdir)
  return workdir


def _listing(directory):
  return {name: os.path.getsize(os.path.join(directory, name)) for name in sorted(os.listdir(directory))}


# --- unverifiable checkpoints -------------------------------------------------------------------------------------

def test_checkpoints_without_sidecars_are_refused_kept_and_trusted_on_request(run_copy):
  tmp_path = run_copy
  ckpt_dir = os.path.join(tmp_path, "checkpoints")
  for step in (2, 4):
    os.remove(os.path.join(ckpt_dir, f"checkpoint_{step:08d}.json"))
  before = _listing(ckpt_dir)
  with pytest.raises(checkpoints.UnverifiedCheckpointError) as info:
    _run(tmp_path, 8)
  message = str(info.value)
  for step in (2, 4):
    assert f"checkpoint_{step:08d}.msgpack" in message
  assert "meta_train.trust_unverified_checkpoints = True" in message and "new --workdir" in message
  assert _listing(ckpt_dir) == before and _steps(tmp_path) == [1, 2, 3, 4]  # nothing deleted, nothing written
  result = _run(tmp_path, 6, trust_unverified_checkpoints=True)
  assert result.step == 6 and _steps(tmp_path) == list(range(1, 7))
  assert checkpoints.latest_step(ckpt_dir) == 6


def test_every_checkpoint_corrupt_names_each_file_and_why(run_copy):
  tmp_path = run_copy
  for step in (2, 4):
    path = checkpoints.checkpoint_path(os.path.join(tmp_path, "checkpoints"), step)
    with open(path, "r+b") as f:
      f.truncate(10)
  with pytest.raises(checkpoints.CheckpointError) as info:
    _run(tmp_path, 6)
  assert "checkpoint_00000002.msgpack" in str(info.value) and "checkpoint_00000004.msgpack" in str(info.value)
  assert "Checksum mismatch" in str(info.value)


def test_leftovers_of_a_killed_write_are_removed_on_the_next_start(run_copy):
  tmp_path = run_copy
  ckpt_dir = tmp_path / "checkpoints"
  (ckpt_dir / ".tmp_x_checkpoint_00000006.msgpack").write_bytes(b"half")
  (ckpt_dir / "checkpoint_00000006.json").write_text('{"step": 6}')
  (tmp_path / "metrics.jsonl.tmp").write_text("")
  _run(tmp_path, 5)
  names = os.listdir(ckpt_dir)
  assert not [n for n in names if n.startswith(".tmp_")] and not (tmp_path / "metrics.jsonl.tmp").exists()
  assert sorted(names) == [f"checkpoint_0000000{s}.{e}" for s in (2, 4, 5) for e in ("json", "msgpack")]


# --- metrics -------------------------------------------------------------------------------------------------------

def test_a_kill_before_the_first_checkpoint_leaves_no_duplicate_metrics(tmp_path):
  # What a run killed at step 3 before its first checkpoint (checkpoint_every = 4) leaves behind.
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for step in (1, 2, 3):
      f.write(json.dumps({"step": step, "meta_loss": 1.0}) + "\n")
  _run(tmp_path, 2)
  assert _steps(tmp_path) == [1, 2]


def test_fully_masked_steps_are_logged_as_masked_warned_and_stop_the_run(tmp_path, caplog):
  # max_loss far below any normalised quadratic loss: every task is masked at every step.
  with caplog.at_level(logging.WARNING), pytest.raises(masking.FullyMaskedError,
                                                       match="max_fully_masked_steps: outer steps 1-3"):
    _run(tmp_path, 10, max_loss=1e-12, max_fully_masked_steps=3)
  assert "all 2 tasks" in caplog.text
  rows = writers.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2, 3]
  for row in rows:
    assert "meta_loss" not in row and "grad_norm" not in row
    assert row["fully_masked_steps"] == 1 and row["masked_tasks"] == 2
  assert checkpoints.latest_step(os.path.join(tmp_path, "checkpoints")) == 2  # none of step 3


def test_fully_masked_limit_zero_never_stops_and_healthy_runs_have_no_marker(tmp_path, base_run):
  result = _run(tmp_path, 3, max_loss=1e-12, max_fully_masked_steps=0)
  assert result.step == 3 and "meta_loss" not in result.metrics and result.metrics["fully_masked_steps"] == 1
  for row in writers.read_jsonl(os.path.join(base_run, "metrics.jsonl")):
    assert "fully_masked_steps" not in row and "meta_loss" in row


def test_summary_averages_meta_loss_over_unmasked_steps_only():
  window = [({"meta_loss": 0.0, "grad_norm": 0.0, "masked_tasks": 4}, True),
            ({"meta_loss": 2.0, "grad_norm": 1.0, "masked_tasks": 1}, False)]
  assert masking.summarize(window) == {"meta_loss": 2.0, "grad_norm": 1.0, "masked_tasks": 2.5,
                                       "fully_masked_steps": 1.0}


# --- one writer per workdir ----------------------------------------------------------------------------------------

HOLDER = """
import sys, time
from lopt import locks
with locks.hold(sys.argv[1]):
  print("held", flush=True)
  time.sleep(120)
"""


def _holder(path):
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_second_process_is_refused_and_a_dead_owners_lock_taken_over(tmp_path, caplog):
  path = str(tmp_path / "lock")  # the workdir's lock: Workdir(tmp_path).lock
  proc = _holder(path)
  try:
    with pytest.raises(locks.LockedError, match=f"process {proc.pid} on host {socket.gethostname()}"):
      with locks.hold(path):
        pass
    with pytest.raises(locks.LockedError, match="another process is writing"):
      outer_loop.meta_train(
          task_sampler=fixed(quadratic(dim=4)), architecture=ff.ff(hidden_sizes=(8,)), estimator=pes_lib.pes(),
          num_outer_steps=1, workdir=str(tmp_path), wandb_mode="disabled")
  finally:
    proc.kill()
    proc.wait()
  assert locks.read_owner(path)["pid"] == proc.pid  # left behind by the kill: stale
  with caplog.at_level(logging.WARNING), locks.hold(path):
    assert locks.read_owner(path)["pid"] == os.getpid()
    with locks.hold(path):  # the same process may hold it again
      pass
  assert f"stale lock {path} of process {proc.pid}" in caplog.text
  assert locks.read_owner(path) is None  # released


# --- failed writes -------------------------------------------------------------------------------------------------

def test_a_failed_checkpoint_write_stops_the_run_and_keeps_the_previous_checkpoint(run_copy, failing_writes):
  tmp_path = run_copy
  ckpt_dir = os.path.join(tmp_path, "checkpoints")
  before = {name: open(os.path.join(ckpt_dir, name), "rb").read() for name in os.listdir(ckpt_dir)}
  failing_writes("checkpoint_00000006.msgpack")
  with pytest.raises(checkpoints.CheckpointWriteError, match="newest intact checkpoint is step 4.*stops at step 6"):
    _run(tmp_path, 8)
  assert {name: open(os.path.join(ckpt_dir, name), "rb").read() for name in os.listdir(ckpt_dir)} == before


# --- one config per workdir ----------------------------------------------------------------------------------------

def test_a_config_change_of_the_state_is_refused_and_config_gin_kept(run_copy, clean_gin):
  tmp_path = run_copy
  config_path = tmp_path / "config.gin"
  recorded = config_path.read_bytes()
  with pytest.raises(config_check.ConfigMismatchError) as info:
    _in_workdir(tmp_path, 4, ["architectures.ff.hidden_sizes = (16,)", "estimators.pes.horizon = 40"])
  message = str(info.value)
  assert "architectures.ff.hidden_sizes: (8,) in the run's config, (16,) now" in message
  assert "estimators.pes.horizon: 20" in message and "log_every" not in message
  assert config_path.read_bytes() == recorded
  assert gin.config_str() == ""
  # Changes that leave the state's meaning alone are allowed, and config.gin then records them.
  absl_logger = absl_logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.setLevel(logging.INFO)  # what experiments/meta_train.py runs at
  try:
    result = _in_workdir(tmp_path, 6, ["meta_train.log_every = 2", "meta_train.checkpoint_every = 4"])
  finally:
    absl_logger.setLevel(level)  # not set_verbosity: that would leave an explicit WARNING level behind
  assert result.step == 6 and "meta_train.num_outer_steps = 6" in config_path.read_text()
  log = (tmp_path / "meta_train.log").read_text()
  assert log.count("gin config:") == 2 and "hidden_sizes = (8,)" in log and "step 6 |" in log


def test_the_check_compares_effects_not_spelling():
  fixture = os.path.join(os.path.dirname(__file__), "fixtures", "v0_1_pes", "config.gin")
  recorded = config_check.snapshot_of_file(fixture)  # an operative config: every parameter listed, short names
  with config.isolated():
    gin.clear_config()
    config.parse([], TINY_RUN_BINDINGS + PES[:4] + ["architectures.ff.hidden_sizes = (8, 8)", "H = 20",
                                                    "estimators.pes.horizon = %H"])
    assert config_check.differences(recorded, config_check.snapshot()) == []
    config.parse([], ["H = 30", "meta_train.architecture = @architectures.ff_small()"])
    diffs = config_check.differences(recorded, config_check.snapshot())
  assert sorted(d.split(":")[0] for d in diffs) == ["estimators.pes.horizon", "meta_train.architecture"]


# --- finished runs, trained optimizers, evaluation -----------------------------------------------------------------

def test_resuming_a_finished_run_does_not_repeat_its_final_evaluation(run_copy):
  tmp_path = run_copy
  calls = []

  def final_evaluation(*, workdir, **kwargs):
    del kwargs
    calls.append(workdir)
    report = {"call": len(calls)}
    with open(os.path.join(workdir, "final_evaluation.json"), "w") as f:
      json.dump(report, f)
    return report

  # The base run is finished at step 4 but was never evaluated (as if killed during it): the evaluation runs.
  ckpt = checkpoints.checkpoint_path(os.path.join(tmp_path, "checkpoints"), 4)
  mtime = os.stat(ckpt).st_mtime_ns
  assert _run(tmp_path, 4, final_evaluation=final_evaluation).evaluation == {"call": 1}
  again = _run(tmp_path, 4, final_evaluation=final_evaluation)
  assert again.evaluation == {"call": 1} and len(calls) == 1
  assert os.stat(ckpt).st_mtime_ns == mtime  # not written again either
  assert _run(tmp_path, 4, final_evaluation=final_evaluation, reevaluate=True).evaluation == {"call": 2}


def test_loading_a_trained_optimizer_reads_its_checkpoint_once(base_run, monkeypatch, clean_gin):
  tmp_path = base_run
  reads = []
  real = checkpoints.serialization.msgpack_restore
  monkeypatch.setattr(checkpoints.serialization, "msgpack_restore", lambda data: reads.append(1) or real(data))
  loaded = trained.load(str(tmp_path))
  assert loaded.step == 4 and len(reads) == 1


def test_evaluation_of_a_truncated_newest_checkpoint_falls_back_and_says_so(run_copy, clean_gin):
  tmp_path = run_copy
  newest = checkpoints.checkpoint_path(os.path.join(tmp_path, "checkpoints"), 4)
  with open(newest, "r+b") as f:
    f.truncate(os.path.getsize(newest) // 2)
  lines = []
  learned = evaluate._load(str(tmp_path), None, False, lines.append)  # pylint: disable=protected-access
  assert learned.step == 2 and "[4]" in lines[0] and "evaluating step 2" in lines[0]
  lines.clear()
  assert evaluate._load(str(tmp_path), 2, False, lines.append).step == 2  # pylint: disable=protected-access
  assert lines == [f"Evaluating checkpoint step 2 of {tmp_path}."]
  os.remove(os.path.join(tmp_path, "checkpoints", "checkpoint_00000004.json"))
  with pytest.raises(checkpoints.UnverifiedCheckpointError, match="--step.*newest is 2"):
    evaluate._load(str(tmp_path), None, False, lines.append)  # pylint: disable=protected-access


def test_console_shows_one_line_for_the_gin_config(caplog):
  with caplog.at_level(logging.INFO):
    writers.ConsoleWriter().write_hparams({"gin_config": "a.b = 1\nc.d = 2\ne.f = 3\n"})
  assert caplog.text.count("\n") == 1 and "3 lines" in caplog.text


def test_the_cli_reports_refusals_in_one_line(run_copy):
  from meta_train_cli import SCRIPT  # pylint: disable=import-outside-toplevel
  os.remove(os.path.join(run_copy, "checkpoints", "checkpoint_00000004.json"))
  command = [sys.executable, SCRIPT, f"--workdir={run_copy}", "--wandb_mode=disabled",
             *[f"--gin_bindings={b}" for b in TINY_RUN_BINDINGS + PES + ["meta_train.num_outer_steps = 6"]]]
  proc = subprocess.run(command + ["--gin_bindings=architectures.ff.hidden_sizes = (4,)"], capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "error: " in proc.stderr and "architectures.ff.hidden_sizes: (8,) in the run's config, (4,) now" in proc.stderr
  proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "error: Cannot verify the checkpoint(s) checkpoint_00000004.msgpack" in proc.stderr
  assert "trust_unverified_checkpoints" in proc.stderr


# --- readable refusals and logs (issue 22) -----------------------------------------------------------------------

def test_adding_a_stability_guard_on_resume_is_refused_in_one_line(run_copy):
  from lopt.evaluation import hooks
  from lopt.meta_trainers import stability

  with pytest.raises(ValueError) as info:
    _run(run_copy, 6, stability=stability.stability_guard(),
         meta_eval=hooks.periodic_meta_eval(num_tasks=1, num_steps=2), meta_eval_every=2)
  message = str(info.value)
  assert message.startswith("meta_train.stability: ") and "\n" not in message and "PyTreeDef" not in message
  assert "checkpoint_00000004.msgpack" in message and "without a stability guard" in message
  assert _steps(run_copy) == [1, 2, 3, 4]  # nothing written


def test_resuming_a_finished_run_reports_its_last_logged_metrics(run_copy):
  logged = writers.read_jsonl(os.path.join(run_copy, "metrics.jsonl"))[-1]
  result = _run(run_copy, 4)
  assert result.step == 4 and result.metrics
  assert result.metrics["meta_loss"] == pytest.approx(logged["meta_loss"])
  message = training.done_message(result)
  assert "{}" not in message and f"meta_loss = {logged['meta_loss']:.4g}" in message
  assert training.done_message(outer_loop.MetaTrainResult(theta=None, step=3, metrics={})) == (
      "Done at step 3; no metrics were logged for it.")
