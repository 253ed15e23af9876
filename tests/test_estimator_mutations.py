"""Deliberately broken estimators must fail the fast estimator tests (a check of the tests themselves).

For every fault of ``estimator_faults.FAULTS`` (components negated or zeroed except the last one, + and - copies
seeing different data, negated or doubled gradients, sign, scale, reset, accumulator and weighting bugs; masked
means over every slot, pairs counted with one valid copy; the validation loss read from the wrong split or at the
wrong cadence; stability guard bugs; architectures ignoring the loss), a subprocess runs the default (non-slow)
tests that must catch it (``estimator_faults.catchers``) with the fault injected and must report a test failure.
``-x`` stops at the first failing test, so a caught fault costs only the tests up to it.

  python -m pytest -m slow tests/test_estimator_mutations.py
"""

import os
import subprocess
import sys

import pytest

import estimator_faults

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def _run(fault: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, **{estimator_faults.ENV: fault})
  env["PYTHONPATH"] = os.pathsep.join([ROOT, TESTS, env.get("PYTHONPATH", "")])
  # -n 0: in-process, so the plugin applies the fault where the tests run and -s shows its line.
  return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-s", "-n", "0", "-p", "estimator_faults",
                         "-p", "no:cacheprovider", "-m", "not slow", *estimator_faults.catchers(fault)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)


@pytest.mark.parametrize("fault", sorted(estimator_faults.SOURCE_FAULTS))
def test_source_fault_applies(fault):
  """Fast: each source fault's snippet occurs exactly once, and the mutated module still compiles."""
  module_name, source = estimator_faults.mutated_source(fault)
  compile(source, module_name, "exec")


@pytest.mark.slow
@pytest.mark.parametrize("fault", estimator_faults.FAULTS)
def test_fault_makes_a_fast_estimator_test_fail(fault):
  result = _run(fault)
  output = result.stdout + result.stderr
  assert f"estimator fault applied: {fault}" in output, output[-3000:]
  # pytest exits with 1 when tests ran and some failed (2-5: interrupted, internal or usage errors, no tests).
  assert result.returncode == 1, output[-3000:]
  assert " failed" in output, output[-3000:]
