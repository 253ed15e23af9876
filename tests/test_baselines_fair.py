"""Fair baselines: edge-hit detection, Adam with cosine decay over the scored horizon, edge marks in the report,
and the held-out suite's contents."""

import jax
import numpy as np
import optax
import pytest

from lopt.evaluation import scoring, suites, training, tuned_baselines
from lopt.evaluation import report as report_lib
from lopt.tasks import quadratic


def test_edge_hit_names_the_end_of_the_grid():
  grid = (1e-3, 1e-2, 1e-1)
  assert tuned_baselines.edge_hit(grid, 1e-3) == "low"
  assert tuned_baselines.edge_hit(grid, 1e-1) == "high"
  assert tuned_baselines.edge_hit(grid, 1e-2) is None
  assert tuned_baselines.edge_hit((1e-1, 1e-3, 1e-2), 1e-3) == "low"  # order of the grid does not matter
  with pytest.raises(ValueError, match="not a value of the grid"):
    tuned_baselines.edge_hit(grid, 0.5)


def test_default_grids_span_five_decades():
  for grid in (tuned_baselines.ADAM_LEARNING_RATES, tuned_baselines.SGD_LEARNING_RATES):
    assert max(grid) / min(grid) >= 1e5 - 1
  names = [b.name for b in tuned_baselines.default_baselines()]
  assert names[:2] == ["adam", "adam_cosine"]


def test_adam_cosine_decays_to_zero_at_num_steps():
  cosine = tuned_baselines.default_baselines(names=["adam_cosine"])[0]
  assert cosine.scheduled and cosine.tuned
  tx = cosine.make(0.1, 4)
  params = {"w": np.ones(3, np.float32)}
  state = tx.init(params)
  sizes = []
  for _ in range(6):
    updates, state = tx.update({"w": np.ones(3, np.float32)}, state, params, loss=1.0)
    sizes.append(float(np.abs(updates["w"]).max()))
  # Adam's normalised step is about lr for a constant gradient: 0.1 * cos schedule, 0 from step 4 on.
  expected = [0.1 * 0.5 * (1 + np.cos(np.pi * t / 4)) for t in range(4)] + [0.0, 0.0]
  np.testing.assert_allclose(sizes, expected, rtol=1e-3, atol=1e-7)


def _report(num_steps=20):
  baselines = tuned_baselines.default_baselines(adam_learning_rates=(1e-4, 1e-3, 1e-1), names=["adam", "adam_cosine"])
  return scoring.evaluate_suite({"quadratic": quadratic(4)}, baselines=baselines, num_steps=num_steps, num_seeds=2,
                                baseline_steps_factor=2, eval_every=10,
                                learned=lambda n: optax.with_extra_args_support(optax.adam(1e-3)),
                                learned_name="adam_1e-3", protocols=("hparam_free",), printer=lambda _: None)


def test_report_marks_edge_hits_and_scheduled_baseline_uses_the_scored_horizon():
  report = _report()
  task = report["tasks"]["quadratic"]
  for name in ("adam", "adam_cosine"):
    record = task["optimizers"][name]
    # On a 4-D quadratic in 20 steps the largest rate wins: an edge hit at the top, reported as such.
    assert record["learning_rate"] == 1e-1 and record["edge"] == "high"
    assert report["edge_hits"][name] == ["quadratic"]
  markdown = report_lib.format_markdown(report)
  assert "Edge hits: adam on 1/1 (quadratic), adam_cosine on 1/1 (quadratic)" in markdown
  row = next(line for line in markdown.splitlines() if line.startswith("| quadratic |"))
  assert row.count("(edge)") == 2
  assert "adam at 1e-3 (untuned): 0/1" in markdown  # the learned one *is* Adam(1e-3): never strictly lower
  # The cosine schedule ends at the scored horizon (20 of 40 baseline steps): the loss is frozen after step 20.
  curve = np.asarray(task["optimizers"]["adam_cosine"]["train_curve"], np.float64)
  assert len(curve) == 40
  constant = np.asarray(task["optimizers"]["adam"]["train_curve"], np.float64)
  assert np.ptp(curve[21:]) < 0.05 * np.ptp(constant[21:]) + 1e-9


def test_heldout_suite_has_at_least_ten_tasks_and_settings():
  suite = suites.get_suite("heldout")
  assert len(suite) >= 10 and len({f.name for f in suite.values()}) == len(suite)
  assert suites.SUITE_SETTINGS["heldout"] == {"num_steps": 1000, "num_seeds": 3}
  family = suite["image_mlp_256"]
  params = family.task(family.sample(jax.random.key(0))).init(jax.random.key(1))
  assert max(x.shape[-1] for x in jax.tree.leaves(params)) == 256
  assert training.HELDOUT_SEED_OFFSET > 0
