"""Evaluation that fits minutes: the baseline cache, the two protocols, horizons and the headline
(lopt/evaluation/{baseline_cache,scoring,headline}.py, lopt/runs/evaluate.py)."""

import json
import math
import os

import optax
import pytest

import lopt
from lopt.evaluation import baseline_cache, headline, scoring, training, tuned_baselines
from lopt.runs import evaluate as run_evaluate
from lopt.tasks import quadratic

SUITE = {"quadratic": quadratic(4)}


def _baselines(*names, adam_learning_rates=(1e-2, 1e-1)):
  return tuned_baselines.default_baselines(names=list(names), adam_learning_rates=adam_learning_rates,
                                           sgd_learning_rates=(1e-2,))


@pytest.fixture
def counted(monkeypatch):
  """Records the baselines each ``train_stacked`` call trains (by how many makers and lanes it gets)."""
  calls = []
  real = training.train_stacked

  def wrapper(family, makers, lanes, key, **kwargs):
    calls.append(len(lanes))
    return real(family, makers, lanes, key, **kwargs)

  monkeypatch.setattr(training, "train_stacked", wrapper)
  return calls


def _evaluate(cache, lines=None, **kwargs):
  settings = dict(baselines=_baselines("adam", "prodigy"), num_steps=10, num_seeds=1, eval_every=5,
                  baseline_cache=str(cache), printer=(lines.append if lines is not None else lambda _: None))
  settings.update(kwargs)
  return scoring.evaluate_suite(SUITE, **settings)


def _losses(report):
  return {name: record["train_curve"] for name, record in report["tasks"]["quadratic"]["optimizers"].items()}


def test_a_cache_hit_trains_no_baseline_and_gives_the_same_report(tmp_path, counted):
  first = _evaluate(tmp_path)
  assert counted == [3] and first["baseline_cache"]["misses"] == 2  # adam's 2 lanes + prodigy's 1, one program
  files = sorted(os.listdir(tmp_path / "quadratic"))
  assert len(files) == 2 and files[0].startswith("adam-") and files[1].startswith("prodigy-")
  second = _evaluate(tmp_path)
  assert counted == [3] and second["baseline_cache"] == {"directory": str(tmp_path), "hits": 2, "misses": 0}
  assert _losses(second) == _losses(first)


def test_only_the_missing_baselines_train(tmp_path, counted):
  _evaluate(tmp_path)
  report = _evaluate(tmp_path, baselines=_baselines("adam", "sgd_momentum", "prodigy"))
  assert counted == [3, 1]  # sgd_momentum's one-value grid alone
  assert list(report["tasks"]["quadratic"]["optimizers"]) == ["adam", "sgd_momentum", "prodigy"]
  assert report["baseline_cache"]["hits"] == 2


@pytest.mark.parametrize("change", [dict(num_seeds=2), dict(baseline_steps_factor=2), dict(seed=1),
                                    dict(baselines=_baselines("adam", "prodigy", adam_learning_rates=(1e-2, 3e-2)))])
def test_a_changed_key_recomputes(tmp_path, counted, change):
  _evaluate(tmp_path)
  report = _evaluate(tmp_path, **change)
  expected_adam = 2 if "baselines" in change else 0  # a new grid recomputes adam; prodigy has no grid, so it hits
  assert report["baseline_cache"]["misses"] == (1 if "baselines" in change else 2) and len(counted) == 2
  assert counted[1] == (expected_adam or 3)


def test_new_versions_recompute(tmp_path, counted, monkeypatch):
  _evaluate(tmp_path)
  monkeypatch.setattr(lopt, "__version__", lopt.__version__ + ".dev1")
  assert _evaluate(tmp_path)["baseline_cache"]["misses"] == 2 and counted == [3, 3]


def test_a_corrupt_file_is_named_and_recomputed(tmp_path, counted):
  first = _evaluate(tmp_path)
  (path,) = [p for p in (tmp_path / "quadratic").iterdir() if p.name.startswith("adam-")]
  path.write_bytes(b"not an npz")
  lines = []
  report = _evaluate(tmp_path, lines)
  assert any(str(path) in line and "corrupt" in line for line in lines), lines
  assert counted == [3, 2] and _losses(report) == _losses(first)
  _evaluate(tmp_path)  # the rewritten file is read again
  assert counted == [3, 2]


def test_resolve_the_cache_directory(monkeypatch, tmp_path):
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.delenv(baseline_cache.ENV_VAR, raising=False)
  assert baseline_cache.resolve() == os.path.join(str(tmp_path), ".cache", "lopt", "baselines")
  monkeypatch.setenv(baseline_cache.ENV_VAR, "off")
  assert baseline_cache.resolve() is None
  assert baseline_cache.resolve(str(tmp_path / "c")) == str(tmp_path / "c")  # the flag wins over the variable
  monkeypatch.setenv(baseline_cache.ENV_VAR, str(tmp_path / "env"))
  assert baseline_cache.resolve() == str(tmp_path / "env") and baseline_cache.resolve("") is None


def test_tuned_protocol_grid_matches_separate_runs(tmp_path):
  """sgd(lr) scaled by m is sgd(lr * m): the tuned grid's lanes equal hparam_free runs at those rates."""
  def run(lr, protocols):
    return _evaluate(tmp_path, baselines=_baselines("adam"), learned=lambda n: optax.with_extra_args_support(
        optax.sgd(lr)), learned_name="sgd", protocols=protocols)

  tuned = run(0.1, ("hparam_free", "tuned"))["tasks"]["quadratic"]
  alone = run(0.1, ("hparam_free",))["tasks"]["quadratic"]
  tenth = run(0.01, ("hparam_free",))["tasks"]["quadratic"]
  record = tuned["optimizers"]["sgd tuned"]
  assert set(record["grid"]) == {f"{m:g}" for m in scoring.MULTIPLIERS}
  assert record["grid"]["1"] == pytest.approx(alone["optimizers"]["sgd"]["final_train_loss"], rel=1e-5)
  assert tuned["optimizers"]["sgd"]["final_train_loss"] == pytest.approx(record["grid"]["1"], rel=1e-6)
  assert record["grid"]["0.1"] == pytest.approx(tenth["optimizers"]["sgd"]["final_train_loss"], rel=1e-4)
  finite = {k: v for k, v in record["grid"].items() if v is not None}
  best = min(finite, key=finite.get)
  assert record["multiplier"] == float(best) and record["final_train_loss"] == pytest.approx(finite[best])
  assert record["edge"] == tuned_baselines.edge_hit(scoring.MULTIPLIERS, record["multiplier"])
  assert "label" in tuned["speedup"] and "label" in tuned["speedup_tuned"]


def test_horizons_write_one_report_each(tmp_path):
  lines = []
  result = run_evaluate.evaluate_workdir(None, out_dir=str(tmp_path / "out"), suite="tiny", baselines=["adam"],
                                         num_steps=10, num_seeds=1, horizons=("1", "3"), wandb_mode="disabled",
                                         tensorboard="off", baseline_cache=str(tmp_path / "cache"),
                                         printer=lines.append)
  for directory, steps in ((tmp_path / "out", 10), (tmp_path / "out" / "horizon_3x", 30)):
    with open(directory / "evaluation.json", encoding="utf-8") as f:
      report = json.load(f)
    assert report["num_steps"] == steps and set(report["tasks"]) == {"quadratic", "rosenbrock"}
    assert (directory / "evaluation.md").exists()
  assert sorted(result.reports) == [1, 3] and result.reports[3]["horizon"] == 3
  assert any(line.startswith("- 3x (30 steps): candidate") for line in "\n".join(lines).splitlines())


def test_bad_protocols_and_horizons_are_named():
  with pytest.raises(ValueError, match="Did you mean 'tuned'"):
    scoring.check_protocols(["tunned"])
  with pytest.raises(ValueError, match="must contain 1.0"):
    scoring.evaluate_suite(SUITE, baselines=[], learned=lambda n: optax.sgd(0.1), multipliers=(0.1, 10.0))
  for bad in (["0"], ["1", "1"], ["1.5"], []):
    with pytest.raises(ValueError, match="horizons"):
      run_evaluate.check_horizons(bad)


def _task(learned, fixed, tuned, speedup):
  return {"optimizers": {"me": {"final_train_loss": learned},
                         "adam": {"final_train_loss": tuned, "grid": {"0.001": fixed, "0.01": tuned}}},
          "speedup": {"value": speedup}}


def test_headline_counts_match_a_hand_count():
  report = {"learned": "me", "tasks": {"a": _task(0.5, 0.6, 0.4, 2.0), "b": _task(None, 0.6, 0.4, 0.0),
                                       "c": _task(0.1, None, 0.2, 0.5), "d": _task(0.3, 0.3, 0.2, 0.25)}}
  (only,) = headline.headline(report).values()
  assert only == {"num_tasks": 4, "beats_adam_1e-3": ["a", "c"], "beats_tuned_adam": ["c"], "diverged": ["b"],
                  "speedup_geomean": pytest.approx(math.exp((math.log(2.0) + math.log(1e-3) + math.log(0.5)
                                                             + math.log(0.25)) / 4))}
  text = headline.format_headline({"hparam_free": only})
  assert "beats Adam(1e-3) on 2/4, beats tuned Adam on 1/4" in text and "diverged on 1/4 (b)" in text
