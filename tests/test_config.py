"""Gin parsing at the edges: every shipped config parses strictly, and bad input gets a helpful error."""

import glob
import os
import subprocess
import sys

import pytest

from lopt import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_FILES = sorted(glob.glob(os.path.join(ROOT, "gin_configs", "**", "*.gin"), recursive=True))


def test_gin_files_exist():
  assert any(path.endswith("quickstart.gin") for path in GIN_FILES)


@pytest.mark.parametrize("path", GIN_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_gin_file_parses_with_nothing_skipped(path, clean_gin):
  config.parse([path])
  # Building the configured objects proves every reference resolves (parsing alone is lazy for @refs).
  import gin
  with open(path) as f:
    text = f.read()
  # Run configs bind all three; component files (e.g. gin_configs/estimators/) bind the ones they provide.
  names = [n for n in ("task_sampler", "architecture", "estimator") if f"meta_train.{n}" in text]
  if "meta_train.task_sampler" in text:
    assert len(names) == 3, f"{path} is a run config but does not bind all of meta_train's plugins."
  assert names, f"{path} binds no meta_train plugin."
  for name in names:
    value = gin.query_parameter(f"meta_train.{name}")
    assert value is not None


def test_unknown_plugin_suggests_closest(clean_gin):
  with pytest.raises(config.ConfigError, match="Did you mean 'architectures.ff'"):
    config.parse([], ["meta_train.architecture = @architectures.fff()"])


def test_plugin_in_wrong_module_suggests_right_one(clean_gin):
  with pytest.raises(config.ConfigError, match="architectures.ff"):
    config.parse([], ["architecture.ff.hidden_sizes = (4,)"])


def test_unknown_parameter_suggests_closest(clean_gin):
  with pytest.raises(config.ConfigError, match="Did you mean 'hidden_sizes'"):
    config.parse([], ["architectures.ff.hiden_sizes = (4,)"])
  with pytest.raises(config.ConfigError, match="Did you mean 'num_outer_steps'"):
    config.parse([], ["meta_train.num_outer_stepz = 3"])


def test_missing_gin_file_is_named(clean_gin):
  with pytest.raises(config.ConfigError, match="no_such_file.gin"):
    config.parse(["/tmp/no_such_file.gin"])


def test_experiment_cli_reports_bad_input(tmp_path):
  script = os.path.join(ROOT, "experiments", "meta_train.py")
  cases = [
      (["--gin_config=/tmp/does_not_exist.gin"], "does_not_exist.gin"),
      (["--gin_config=" + os.path.join(ROOT, "gin_configs", "quickstart.gin"),
        "--gin_bindings=meta_train.architecture = @architectures.fff()"], "Did you mean 'architectures.ff'"),
  ]
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  cases.append((["--gin_config=" + os.path.join(ROOT, "gin_configs", "quickstart.gin")], str(blocker)))
  for args, expected in cases:
    workdir = str(blocker / "sub") if expected == str(blocker) else str(tmp_path / "wd")
    proc = subprocess.run([sys.executable, script, f"--workdir={workdir}", "--wandb_mode=disabled", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_list_plugins_prints_every_kind_and_name():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "list_plugins.py")],
                        capture_output=True, text=True, timeout=120, check=True)
  from lopt import registry
  for kind in registry.KINDS:
    assert kind in proc.stdout
    for name in registry.names(kind):
      assert name in proc.stdout
  assert "243 meta-parameters" in proc.stdout  # the default ff (8, 8)
