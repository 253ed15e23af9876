"""Bad values get one line naming the binding: every numeric parameter of every registered plugin, and meta_train.

The walk covers whatever is registered, so a new plugin whose factory does not check its arguments fails here.
"""

import inspect
import os
import re
import subprocess
import sys

import pytest

import lopt  # noqa: F401  registers every plugin.
from lopt import registry, runs
from lopt.meta_trainers import outer_loop
from meta_train_cli import SCRIPT

KINDS = ("task_family", "task_sampler", "architecture", "estimator", "eval_suite")


def _required_value(name: str):
  """A valid value for a parameter without a default (the wrappers' inner plugins)."""
  family = registry.lookup("task_family", "quadratic")(4)
  if name == "task_family":
    return family
  if name == "task_families":
    return [family]
  if name == "estimators":
    return [registry.lookup("estimator", "tbptt")(num_tasks=1, truncation_length=2, horizon=4)]
  raise AssertionError(f"test_bad_values has no valid value for the required parameter '{name}'; add one.")


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numeric_kind(param: inspect.Parameter) -> str | None:
  """"scalar", "sequence" (a tuple of numbers) or None for a parameter that takes no numbers."""
  default, annotation = param.default, str(param.annotation)
  if _is_number(default):
    return "scalar"
  if isinstance(default, tuple) and default and all(_is_number(v) for v in default):
    return "sequence"
  if default is None and re.search(r"\b(int|float)\b", annotation):
    return "sequence" if "Sequence" in annotation else "scalar"
  return None


def _cases():
  cases = []
  for kind in KINDS:
    for name in registry.names(kind):
      for param in inspect.signature(registry.lookup(kind, name)).parameters.values():
        numeric = _numeric_kind(param)
        if numeric == "scalar":
          cases += [(kind, name, param.name, "eight"), (kind, name, param.name, -1)]
        elif numeric == "sequence":
          cases += [(kind, name, param.name, ("eight",)), (kind, name, param.name, (-1,))]
  return cases


CASES = _cases()


def _call(kind: str, name: str, **overrides):
  factory = registry.lookup(kind, name)
  kwargs = {p.name: _required_value(p.name) for p in inspect.signature(factory).parameters.values()
            if p.default is inspect.Parameter.empty}
  return factory(**{**kwargs, **overrides})


def _one_line_error(kind: str, name: str, param: str, value) -> str:
  binding = f"{registry.KINDS[kind]}.{name}.{param}"
  with pytest.raises((ValueError, TypeError)) as info:
    _call(kind, name, **{param: value})
  message = str(info.value)
  assert "\n" not in message, f"{binding} = {value!r}: a message of several lines: {message!r}"
  assert binding in message, f"{binding} = {value!r}: the message does not name the binding: {message!r}"
  return message


def test_the_walk_covers_every_kind():
  walked = {kind for kind, *_ in CASES}
  # Suites take no arguments; every other kind has numeric parameters to check.
  assert walked == {"task_family", "task_sampler", "architecture", "estimator"}
  assert len({(k, n) for k, n, *_ in CASES}) >= 20


@pytest.mark.parametrize("kind,name,param,value", CASES, ids=[f"{n}.{p}={v!r}" for _, n, p, v in CASES])
def test_bad_value_is_one_line_naming_the_parameter(kind, name, param, value):
  message = _one_line_error(kind, name, param, value)
  # A bound that excludes zero (or needs an integer >= 1) also refuses the bound itself.
  if value == -1 and re.search(r"(> 0\b|>= 1\b)", message):
    _one_line_error(kind, name, param, 0)


def test_defaults_are_valid():
  for kind in KINDS:
    for name in registry.names(kind):
      _call(kind, name)


def test_meta_train_argument_checks_name_the_binding():
  good = dict(num_outer_steps=10, seed=0, log_every=1, checkpoint_every=5, keep_checkpoints=2, meta_eval=None,
              meta_eval_every=0, handle_signals=True, num_devices=None, wandb_mode="offline",
              trust_unverified_checkpoints=False, max_fully_masked_steps=20, reevaluate=False)
  outer_loop._check_arguments(**good)
  for param, bad in [("num_outer_steps", -1), ("num_outer_steps", "ten"), ("num_outer_steps", 1e3), ("seed", -1),
                     ("log_every", 0), ("checkpoint_every", 0), ("keep_checkpoints", 0), ("meta_eval_every", -1),
                     ("handle_signals", 1), ("num_devices", 0), ("wandb_mode", "cloud"),
                     ("trust_unverified_checkpoints", "yes"), ("max_fully_masked_steps", -1), ("reevaluate", 2)]:
    with pytest.raises(ValueError, match=rf"^meta_train\.{param}: [^\n]+$"):
      outer_loop._check_arguments(**{**good, param: bad})
  with pytest.raises(ValueError, match=r"write it as 1000"):
    outer_loop._check_arguments(**{**good, "num_outer_steps": 1e3})
  factory = registry.lookup("architecture", "adam")
  with pytest.raises(ValueError, match=r"^meta_train\.architecture: .*add the parentheses"):
    outer_loop._check_arguments(**good, architecture=factory)
  with pytest.raises(ValueError, match=r"^meta_train\.task_sampler: .*got TaskFamily 'quadratic"):
    outer_loop._check_arguments(**good, task_sampler=_required_value("task_family"))


QUICKSTART = os.path.join(os.path.dirname(SCRIPT), os.pardir, "gin_configs", "quickstart.gin")
# binding -> what the one error line must say.
BAD_BINDINGS = {
    'estimators.pes.num_tasks = "eight"': "error: estimators.pes.num_tasks: must be an integer >= 1, got 'eight'",
    "meta_train.num_outer_steps = -5": "error: meta_train.num_outer_steps: must be an integer >= 0, got -5",
    "estimators.pes.std = -1": "error: estimators.pes.std: must be a finite number > 0, got -1",
    "meta_train.log_every = 0": "error: meta_train.log_every: must be an integer >= 1, got 0",
    "NUM_OUTER_STEPS = 1e3": "error: meta_train.num_outer_steps: must be an integer >= 0, got 1000.0 (float); "
                             "write it as 1000",
    "NUM_OUTER_STEPS = abc": "error: gin binding 'NUM_OUTER_STEPS = abc': cannot read 'abc' as a value",
}
# absl's log records ("I1203 15:56:27.455039 1398 file.py:117] ...") are not part of the error report.
ABSL_RECORD = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")


@pytest.mark.parametrize("binding", list(BAD_BINDINGS))
def test_bad_binding_is_one_error_line_and_leaves_no_workdir(binding, tmp_path, capsys):
  """What experiments/meta_train.py runs, in this process: the quick start with one bad binding."""
  workdir = tmp_path / "runs" / "nested"
  with pytest.raises(SystemExit) as exit_info, runs.user_errors():
    runs.meta_train_in_workdir(str(workdir), gin_configs=[QUICKSTART], gin_bindings=[binding])
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith(BAD_BINDINGS[binding]), lines
  assert not (tmp_path / "runs").exists(), f"left {sorted(os.listdir(tmp_path / 'runs'))} behind"


def test_meta_train_process_prints_one_error_line_and_leaves_no_workdir(tmp_path):
  """The real entry point: no traceback, exit status 2; both runs fail before compiling and start at once."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("LOPT_TRACEBACK", None)
  started = {}
  for i, binding in enumerate(['estimators.pes.num_tasks = "eight"', "NUM_OUTER_STEPS = 1e3"]):
    command = [sys.executable, SCRIPT, f"--gin_config={QUICKSTART}", f"--workdir={tmp_path / f'run{i}' / 'nested'}",
               f"--gin_bindings={binding}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    started[binding] = (process, tmp_path / f"run{i}")
  for binding, (process, created) in started.items():
    _, stderr = process.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip() and not ABSL_RECORD.match(line)]
    assert process.returncode == 2, (binding, stderr)
    assert "Traceback" not in stderr, (binding, stderr)
    assert len(lines) == 1 and lines[0].startswith(BAD_BINDINGS[binding]), (binding, lines)
    assert not created.exists(), f"{binding}: left {sorted(os.listdir(created))} behind"
