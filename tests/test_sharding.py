"""Meta-training sharded over forced host devices matches one device; device counts are checked; task axes.

The 8-device checks run in one subprocess (``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before
JAX starts, and the rest of the suite keeps its single device); the tests below read its JSON report.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lopt.architectures import ff
from lopt.meta_trainers import combined, es, pes, sharding, tbptt
from lopt.tasks import quadratic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The update of theta in one step on 8 devices vs 1 device, relative to the largest update entry. The meta-optimizer
# is sgd(1.0), so the update is minus the meta-gradient: only the order of the float32 sums over tasks differs (an
# all-reduce over devices). Measured: below 1e-7 of the largest entry (pes 4e-8, tbptt 2e-9).
TOLERANCE = 1e-5

_CHILD = r"""
import json, sys
import jax, numpy as np, optax
from absl import logging
from lopt.architectures import ff
from lopt.meta_trainers import outer_loop, pes, tbptt
from lopt.tasks import fixed, quadratic

logging.set_verbosity(logging.INFO)
out = {"devices": jax.device_count()}
estimators = {"pes": lambda n: pes.pes(num_tasks=n, truncation_length=4, horizon=16),
              "tbptt": lambda n: tbptt.tbptt(num_tasks=n, truncation_length=4, horizon=16)}

def run(workdir, name, num_tasks, num_devices, num_outer_steps=1):
  return outer_loop.meta_train(
      task_sampler=fixed(quadratic(dim=4)), architecture=ff.ff(hidden_sizes=(8,)),
      estimator=estimators[name](num_tasks), num_outer_steps=num_outer_steps, workdir=workdir,
      wandb_mode="disabled", meta_optimizer=optax.sgd(1.0), num_devices=num_devices, handle_signals=False)

theta = run(f"{sys.argv[1]}/init", "pes", 8, 1, num_outer_steps=0).theta
out["init"] = [np.asarray(x, np.float64).ravel().tolist() for x in jax.tree.leaves(theta)]
for name in estimators:
  for n in (1, 8):
    theta = run(f"{sys.argv[1]}/{name}_{n}", name, 8, n).theta
    out[f"{name}_{n}"] = [np.asarray(x, np.float64).ravel().tolist() for x in jax.tree.leaves(theta)]
# Default device count: the largest that divides the task batch (6 tasks on 8 devices: 6).
run(f"{sys.argv[1]}/default_6", "tbptt", 6, None, num_outer_steps=0)
for bad in (3, 16):
  try:
    run(f"{sys.argv[1]}/bad_{bad}", "tbptt", 8, bad)
    out[f"error_{bad}"] = None
  except ValueError as e:
    out[f"error_{bad}"] = str(e)
print("REPORT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
  flags = os.environ.get("XLA_FLAGS", "")  # keeps conftest.py's optimisation level
  env = dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=8".strip(), PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path_factory.mktemp("sharding"))], env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.split("REPORT", 1)[1])
  return report, proc.stderr


@pytest.mark.parametrize("estimator", ["pes", "tbptt"])
def test_eight_devices_match_one_device(eight_devices, estimator):
  report, log = eight_devices
  assert report["devices"] == 8
  assert "Splitting 8 tasks over 8 cpu device(s)" in log and "Splitting 8 tasks over 1 cpu device(s)" in log
  init = np.concatenate(report["init"])
  one = np.concatenate(report[f"{estimator}_1"]) - init
  eight = np.concatenate(report[f"{estimator}_8"]) - init
  scale = np.max(np.abs(one))
  assert scale > 0  # theta moved
  np.testing.assert_allclose(eight, one, rtol=0, atol=TOLERANCE * scale)


def test_default_device_count_divides_task_batch(eight_devices):
  _, log = eight_devices
  assert "Splitting 6 tasks over 6 cpu device(s) of 8" in log


def test_bad_device_counts_name_both_numbers(eight_devices):
  report, _ = eight_devices
  assert "num_devices=3" in report["error_3"] and "8 tasks" in report["error_3"]
  assert "num_devices=16" in report["error_16"] and "only 8 devices" in report["error_16"]


def test_more_devices_than_present_is_an_error_in_process():
  too_many = jax.device_count() + 1
  with pytest.raises(ValueError, match=f"num_devices={too_many} but only {jax.device_count()} devices"):
    sharding.resolve_num_devices(too_many, [too_many], num_tasks=too_many)


def test_default_picks_largest_divisor_that_fits():
  available = jax.device_count()
  expected = max(n for n in range(1, available + 1) if 12 % n == 0)
  assert sharding.resolve_num_devices(None, [12], num_tasks=12) == expected


def _axes_and_state(estimator):
  arch, family = ff.ff(hidden_sizes=(8,)), quadratic(dim=4)
  theta = arch.init(jax.random.key(0))
  state = jax.eval_shape(lambda: estimator.init(theta, jax.random.key(1), task_family=family,
                                                learned_optimizer=arch))
  return estimator.task_axes(state), state


def _pairs(axes, state):
  """(axis, shape) of every leaf."""
  leaves = jax.tree.leaves(axes, is_leaf=lambda x: x is None)
  return [(a, s.shape) for a, s in zip(leaves, jax.tree.leaves(state))]


def test_task_axes_of_tbptt_are_leading():
  assert {a for a, _ in _pairs(*_axes_and_state(tbptt.tbptt(num_tasks=3)))} == {0}


def test_task_axes_of_pes_skip_the_sign_axis_even_when_lengths_coincide():
  # 2 tasks: the inner states have shape (2 signs, 2 tasks, ...), so a shape guess could pick the sign axis.
  axes, state = _axes_and_state(pes.pes(num_tasks=2))
  assert {a for a, _ in _pairs(axes.inner, state.inner)} == {1}
  assert {a for a, _ in _pairs(axes.accumulator, state.accumulator)} == {0}


def test_task_axes_of_es_split_slots_of_pairs():
  # One shared inner state per pair slot: the task axis leads.
  axes, state = _axes_and_state(es.es(num_tasks=2, num_pairs=3))
  assert {(a, s[a]) for a, s in _pairs(axes, state)} == {(0, 6)}
  assert sharding.task_batch_sizes(state, axes) == [6]


def test_task_axes_of_combined_estimator_follow_each_part():
  estimator = combined.combined(estimators=[tbptt.tbptt(num_tasks=2), pes.pes(num_tasks=4)])
  axes, state = _axes_and_state(estimator)
  assert sharding.task_batch_sizes(state, axes) == [2, 4]
  assert {a for a, _ in _pairs(axes[0], state[0])} == {0}
  assert {a for a, _ in _pairs(axes[1].inner, state[1].inner)} == {1}


def test_shared_scalars_are_replicated():
  axes = tbptt.tbptt(num_tasks=2).task_axes({"count": np.zeros(()), "per_task": np.zeros((2, 3))})
  assert axes == {"count": None, "per_task": 0}
