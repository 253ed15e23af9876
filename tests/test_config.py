"""Gin parsing at the edges: every shipped config parses strictly, and bad input gets a helpful error."""

import glob
import os
import re
import subprocess
import sys

import pytest

from lopt import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_FILES = sorted(glob.glob(os.path.join(ROOT, "gin_configs", "**", "*.gin"), recursive=True))


def test_gin_files_exist():
  assert any(path.endswith("quickstart.gin") for path in GIN_FILES)


PLUGIN_TYPES = {"task_sampler": "TaskSampler", "architecture": "LearnedOptimizer", "estimator": "GradientEstimator"}


@pytest.mark.parametrize("path", GIN_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_gin_file_parses_and_builds_with_nothing_skipped(path, clean_gin):
  import gin
  import lopt

  with open(path) as f:
    text = "\n".join(line for line in f if not line.lstrip().startswith("#"))
  # A file that includes a full recipe (experiments/, pretrained/, or an ablation of one) is a run config itself.
  run_config = "meta_train.task_sampler" in text or bool(
      re.search(r"include 'gin_configs/(experiments|pretrained|ablations)/", text))
  # Component files (architectures/, estimators/, ablations/) are layered over a run config, as documented.
  config.parse([path] if run_config else [os.path.join(ROOT, "gin_configs", "quickstart.gin"), path])
  bound = {}
  for name, type_name in PLUGIN_TYPES.items():
    if not run_config and f"meta_train.{name}" not in text:
      continue
    try:
      reference = gin.query_parameter(f"meta_train.{name}")
    except ValueError:
      continue
    # Building the configured object proves every reference and value resolves (parsing alone is lazy).
    bound[name] = reference.scoped_configurable_fn()
    assert isinstance(bound[name], getattr(lopt, type_name)), (path, name, bound[name])
  if os.path.basename(path) == "base.gin":
    assert not bound, "base.gin holds the outer-loop defaults only; run configs bind the plugins."
    return
  assert bound, f"{path} binds no meta_train plugin."
  if run_config:  # all three plugins, and the shared outer-loop defaults
    assert len(bound) == 3, f"{path} is a run config but does not bind all of meta_train's plugins."
    assert "include 'gin_configs/base.gin'" in text or re.search(r"include 'gin_configs/\w+/", text), path
    if "keep_checkpoints" not in text and "include 'gin_configs/base.gin'" in text:
      assert gin.query_parameter("meta_train.keep_checkpoints") == 3  # base.gin's default reached the run


def test_includes_resolve_from_any_working_directory(tmp_path, clean_gin):
  import gin

  previous = os.getcwd()
  os.chdir(tmp_path)
  try:
    config.parse([os.path.join(ROOT, "gin_configs", "quickstart.gin")])
  finally:
    os.chdir(previous)
  assert gin.query_parameter("meta_train.keep_checkpoints") == 3  # from base.gin
  assert gin.query_parameter("%NUM_OUTER_STEPS") == 1000  # quickstart's override of base.gin's macro


def test_gin_file_that_is_a_directory_is_named(clean_gin, tmp_path):
  with pytest.raises(config.ConfigError, match="is a directory"):
    config.parse([str(tmp_path)])


def test_isolated_keeps_the_callers_bindings(clean_gin):
  import gin

  config.parse([], ["meta_train.seed = 7"])
  with config.isolated():
    gin.clear_config()
    config.parse([], ["meta_train.seed = 3", "meta_train.log_every = 2"])
    assert gin.query_parameter("meta_train.seed") == 3
  assert gin.query_parameter("meta_train.seed") == 7
  with pytest.raises(ValueError):
    gin.query_parameter("meta_train.log_every")


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
