"""Tests of lopt.writers: JSONL, console, wandb (offline/disabled only: no network) and composition."""

import glob
import json
import logging
import os

import jax.numpy as jnp
import numpy as np
import pytest

from lopt import writers
from lopt import workdir as layout


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
  """Keeps every file wandb writes (settings, cache, logs) under tmp_path and off the network."""
  home = tmp_path / "home"
  home.mkdir()
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
  monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "cache"))
  monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "config"))
  monkeypatch.setenv("WANDB_DATA_DIR", str(home / "data"))
  for name in ("WANDB_MODE", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_API_KEY", "WANDB_BASE_URL"):
    monkeypatch.delenv(name, raising=False)
  return tmp_path


class _Recorder(writers.MetricWriter):

  def __init__(self):
    self.calls = []

  def write_scalars(self, step, scalars):
    self.calls.append(("scalars", step, dict(scalars)))

  def write_hparams(self, hparams):
    self.calls.append(("hparams", dict(hparams)))

  def flush(self):
    self.calls.append(("flush",))

  def close(self):
    self.calls.append(("close",))


def test_jsonl_round_trip_nan_and_append(tmp_path):
  path = str(tmp_path / "sub" / "metrics.jsonl")
  writer = writers.JsonlWriter(path)
  writer.write_scalars(1, {"loss": jnp.float32(0.5), "count": np.int64(3), "ok": True})
  writer.write_scalars(2, {"loss": float("nan"), "grad_norm": jnp.array(np.inf)})
  # Each line is flushed as written, so it is readable before close.
  assert len(writers.read_jsonl(path)) == 2
  writer.close()
  writer = writers.JsonlWriter(path)
  writer.write_scalars(3, {"loss": 0.25})
  writer.close()

  for line in open(path, encoding="utf-8"):
    json.loads(line)  # Every line is strict JSON.
  assert "NaN" not in open(path, encoding="utf-8").read()
  rows = writers.read_jsonl(path)
  assert rows == [{"step": 1, "loss": 0.5, "count": 3, "ok": True},
                  {"step": 2, "loss": None, "grad_norm": None},
                  {"step": 3, "loss": 0.25}]
  assert isinstance(rows[0]["count"], int)


def test_jsonl_after_torn_line(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  with open(path, "w", encoding="utf-8") as f:
    f.write('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
  writer = writers.JsonlWriter(path)
  writer.write_scalars(3, {"loss": 0.5})
  writer.close()
  assert writers.read_jsonl(path) == [{"step": 1, "loss": 1.0}, {"step": 3, "loss": 0.5}]


def test_non_scalar_metric_rejected(tmp_path):
  writer = writers.JsonlWriter(str(tmp_path / "m.jsonl"))
  with pytest.raises(ValueError, match="'vec'"):
    writer.write_scalars(0, {"vec": np.zeros(3)})
  writer.close()


def test_console_writer_logs_one_line(caplog):
  with caplog.at_level(logging.INFO):
    writers.ConsoleWriter().write_scalars(7, {"loss": 0.123456789, "tasks": 4})
  assert "step 7 | loss=0.12346 tasks=4" in caplog.text


def test_multi_writer_fans_out():
  a, b = _Recorder(), _Recorder()
  multi = writers.MultiWriter([a, b])
  multi.write_scalars(5, {"x": 1.0})
  multi.write_hparams({"gin_config": "a = 1"})
  multi.flush()
  multi.close()
  expected = [("scalars", 5, {"x": 1.0}), ("hparams", {"gin_config": "a = 1"}), ("flush",), ("close",)]
  assert a.calls == expected and b.calls == expected


def test_wandb_bad_mode():
  with pytest.raises(ValueError, match="offline, online, disabled"):
    writers.WandbWriter(mode="offlne", directory="/nonexistent")
  with pytest.raises(ValueError, match="offline, online, disabled"):
    writers.create_default_writers("/nonexistent", wandb_mode="bogus")


def test_wandb_disabled(wandb_env):
  directory = str(wandb_env / "run")
  writer = writers.WandbWriter(mode="disabled", directory=directory, config={"seed": 1})
  writer.write_scalars(1, {"loss": 1.0})
  writer.write_hparams({"gin_config": "x = 1"})
  writer.close()
  assert not os.path.exists(os.path.join(directory, layout.WANDB_RUN_ID))
  assert not glob.glob(os.path.join(directory, "wandb", "*run-*"))


def test_wandb_offline_writes_run_and_resumes_same_id(wandb_env):
  directory = str(wandb_env / "run")
  writer = writers.WandbWriter(mode="offline", directory=directory, name="test", config={"seed": 1})
  writer.write_hparams({"gin_config": "meta_train.seed = 1"})
  writer.write_scalars(1, {"loss": jnp.float32(2.0)})
  writer.write_scalars(2, {"loss": 1.5, "nan_metric": float("nan")})
  writer.write_scalars(3, {"loss": 1.0})
  run_id = writer.run.id
  # wandb commits a step's row when a later step is logged, so steps 1 and 2 have reached the run.
  assert writer.run.summary["_step"] == 2 and writer.run.summary["loss"] == 1.5
  assert writer.run.config["gin_config"] == "meta_train.seed = 1"
  writer.close()
  writer.close()  # Idempotent.

  with open(os.path.join(directory, layout.WANDB_RUN_ID), encoding="utf-8") as f:
    assert f.read() == run_id
  run_files = glob.glob(os.path.join(directory, "wandb", "offline-run-*", f"run-{run_id}.wandb"))
  assert len(run_files) == 1 and os.path.getsize(run_files[0]) > 0

  resumed = writers.WandbWriter(mode="offline", directory=directory)
  assert resumed.run.id == run_id
  resumed.write_scalars(4, {"loss": 0.5})
  resumed.close()
  assert len(glob.glob(os.path.join(directory, "wandb", "offline-run-*", f"run-{run_id}.wandb"))) == 2


def test_default_writers(wandb_env):
  workdir = str(wandb_env / "work")
  writer = writers.create_default_writers(workdir, wandb_mode="disabled", config_text="a = 1")
  writer.write_scalars(1, {"loss": 0.5})
  writer.close()
  assert writers.read_jsonl(os.path.join(workdir, "metrics.jsonl")) == [{"step": 1, "loss": 0.5}]
  assert not os.path.exists(os.path.join(workdir, "wandb"))

  other = writers.create_default_writers(str(wandb_env / "other"), wandb_mode="offline", is_main_process=False)
  assert isinstance(other, writers.NullWriter)
  other.write_scalars(1, {"loss": 0.5})
  other.close()
  assert not os.path.exists(wandb_env / "other")


def test_default_writers_offline(wandb_env):
  workdir = str(wandb_env / "work")
  writer = writers.create_default_writers(workdir, wandb_mode="offline", config_text="a = 1")
  writer.write_scalars(1, {"loss": 0.5})
  writer.close()
  assert os.path.exists(os.path.join(workdir, layout.WANDB_RUN_ID))
  assert glob.glob(os.path.join(workdir, "wandb", "offline-run-*"))
  assert writers.read_jsonl(os.path.join(workdir, "metrics.jsonl")) == [{"step": 1, "loss": 0.5}]


def _image(h=12, w=16):
  return np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)


def test_images_fan_out_and_are_checked(caplog):
  a, b = _Recorder(), _Recorder()
  with caplog.at_level(logging.INFO):
    writers.MultiWriter([a, b, writers.ConsoleWriter(), writers.NullWriter()]).write_images(3, {"plot": _image()})
  assert "step 3 | image plot 12x16x3" in caplog.text
  # The base class ignores images, so writers written before images existed keep working.
  assert a.calls == [] and b.calls == []
  with pytest.raises(ValueError, match="'bad'"):
    writers.ConsoleWriter().write_images(0, {"bad": np.zeros((4, 4), np.uint8)})
  with pytest.raises(ValueError, match="uint8"):
    writers.ConsoleWriter().write_images(0, {"bad": np.zeros((4, 4, 3), np.float32)})


def test_jsonl_ignores_images(tmp_path):
  writer = writers.JsonlWriter(str(tmp_path / "m.jsonl"))
  writer.write_images(1, {"plot": _image()})
  writer.close()
  assert writers.read_jsonl(str(tmp_path / "m.jsonl")) == []


def test_wandb_offline_logs_images(wandb_env):
  directory = str(wandb_env / "run")
  writer = writers.WandbWriter(mode="offline", directory=directory)
  writer.write_images(1, {"evaluation/curves": _image(32, 48)})
  writer.write_scalars(2, {"loss": 1.0})  # commits step 1
  writer.close()
  pngs = glob.glob(os.path.join(directory, "wandb", "offline-run-*", "files", "media", "images", "**", "*.png"),
                   recursive=True)
  assert len(pngs) == 1


def test_wandb_disabled_accepts_images(wandb_env):
  writer = writers.WandbWriter(mode="disabled", directory=str(wandb_env / "run"))
  writer.write_images(1, {"plot": _image()})
  writer.close()
  assert not glob.glob(os.path.join(wandb_env / "run", "wandb", "*run-*"))


@pytest.mark.skipif(writers.tensorboard_available(), reason="the [tensorboard] extra is installed")
def test_tensorboard_requested_but_missing_names_the_extra(wandb_env):
  workdir = str(wandb_env / "work")
  with pytest.raises(ImportError, match=r"lopt\[tensorboard\]"):
    writers.create_default_writers(workdir, wandb_mode="offline", tensorboard=True)
  assert not os.path.exists(os.path.join(workdir, "wandb"))  # failed before starting a wandb run
  writer = writers.create_default_writers(workdir, wandb_mode="disabled")  # auto: silently without
  writer.close()
  assert not os.path.exists(os.path.join(workdir, layout.TENSORBOARD))


class _FakeSummaryWriter:
  """Stands in for clu.metric_writers.SummaryWriter (which needs TensorFlow)."""

  instances = []

  def __init__(self, logdir):
    self.logdir, self.calls = logdir, []
    _FakeSummaryWriter.instances.append(self)

  def __getattr__(self, name):
    return lambda *args: self.calls.append((name,) + args)


def test_tensorboard_writer_through_clu(wandb_env, monkeypatch):
  import sys
  import types

  import clu

  fake = types.ModuleType("clu.metric_writers")
  fake.SummaryWriter = _FakeSummaryWriter
  monkeypatch.setitem(sys.modules, "clu.metric_writers", fake)
  monkeypatch.setattr(clu, "metric_writers", fake, raising=False)
  monkeypatch.setattr(writers, "tensorboard_available", lambda: True)
  workdir = str(wandb_env / "work")
  writer = writers.create_default_writers(workdir, wandb_mode="disabled", config_text="a = 1")
  writer.write_scalars(4, {"loss": np.float32(0.5)})
  writer.write_images(4, {"plot": _image()})
  writer.close()
  (tb,) = _FakeSummaryWriter.instances
  assert tb.logdir == os.path.join(workdir, layout.TENSORBOARD)
  assert [c[0] for c in tb.calls] == ["write_texts", "write_scalars", "write_images", "close"]
  assert tb.calls[0][1:] == (0, {"gin_config": "a = 1"})
  assert tb.calls[1][1:] == (4, {"loss": 0.5}) and isinstance(tb.calls[1][2]["loss"], float)
