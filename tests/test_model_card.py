"""Model cards (lopt/evaluation/model_card.py): every stored card is what its stored results render to, and the
results are collected from real evaluation reports."""

import json
import os
import shutil

import jax
import pytest

from lopt.architectures import celo2
from lopt.evaluation import model_card, scoring, suites, tuned_baselines
from lopt.evaluation.report import write_report

CARDS = os.path.join(os.path.dirname(__file__), "..", "docs", "pretrained")


@pytest.mark.parametrize("name", model_card.stored(CARDS) if os.path.isdir(CARDS) else [])
def test_stored_card_is_its_results_rendered(name):
  with open(os.path.join(CARDS, f"{name}.json"), encoding="utf-8") as f:
    results = json.load(f)
  with open(os.path.join(CARDS, f"{name}.md"), encoding="utf-8") as f:
    card = f.read()
  assert model_card.render(results) == card, (f"docs/pretrained/{name}.md differs from what its JSON renders to: "
                                              "regenerate it with experiments/model_card.py, never edit it by hand")


def test_a_card_is_stored_for_every_shipped_celo2_optimizer():
  from lopt import pretrained  # pylint: disable=import-outside-toplevel
  shipped = [n for n in pretrained.names() if pretrained.load(n).entry["architecture"] == "celo2"]
  assert set(shipped) <= set(model_card.stored(CARDS) if os.path.isdir(CARDS) else [])


@pytest.fixture(scope="module")
def evaluation_dir(tmp_path_factory):
  """A real two-protocol evaluation of an untrained celo2 on the tiny suite, written like evaluate.py writes it."""
  arch = celo2.celo2(vectors="learned", orthogonalize=False)
  theta = arch.init(jax.random.key(0))
  report = scoring.evaluate_suite(suites.get_suite("tiny"),
                                  baselines=tuned_baselines.default_baselines(names=["adam", "adam_cosine"]),
                                  learned=lambda n: arch.optimizer(theta, num_steps=n), learned_name="celo2",
                                  protocols=("hparam_free", "tuned"), num_steps=20, num_seeds=1,
                                  printer=lambda _: None)
  out = tmp_path_factory.mktemp("evaluation")
  write_report(report, str(out))
  shutil.copytree(out, out / "horizon_10x")  # a second horizon directory, as evaluate.py --horizons=1,10 writes
  return str(out), report


def test_collect_evaluation_takes_every_horizon_and_the_report_numbers(evaluation_dir):
  out, report = evaluation_dir
  collected = model_card.collect_evaluation(out)
  assert list(collected) == ["1x", "10x"]
  one = collected["1x"]
  assert one["headline"] == report["headline"]
  for task, row in one["tasks"].items():
    optimizers = report["tasks"][task]["optimizers"]
    assert row["learned"] == optimizers["celo2"]["final_train_loss"]
    assert row["tuned_adam"] == optimizers["adam"]["final_train_loss"]
    assert row["adam_1e-3"] == optimizers["adam"]["grid"]["0.001"]
    assert row["multiplier"] == optimizers["celo2 tuned"]["multiplier"]


def test_build_and_render_show_the_headline_counts(evaluation_dir, tmp_path):
  out, report = evaluation_dir
  recipe = tmp_path / "recipe.json"
  recipe.write_text(json.dumps({"gin": "gin_configs/pretrained/celo2_v1.gin", "summary": "A test card.",
                                "card_command": "python experiments/model_card.py --name=test"}))
  results = model_card.build("test", recipe_path=str(recipe), workdir=None, evaluations=[("tiny", out)],
                             ablations=[("untrained", "tiny", out)], ablation_note="", figure_dir=str(tmp_path),
                             card_dir=str(tmp_path))
  json_path, md_path = model_card.write(results, str(tmp_path))
  card = open(md_path, encoding="utf-8").read()
  assert card == model_card.render(json.load(open(json_path, encoding="utf-8")))
  s = report["headline"]["hparam_free"]
  row = f"| tiny | 1x (20 steps) | hparam_free | {len(s['beats_adam_1e-3'])}/2 | {len(s['beats_tuned_adam'])}/2 |"
  assert row in card
  assert "| untrained | tiny |" in card and "python experiments/model_card.py --name=test" in card


def test_bad_input_names_itself(tmp_path):
  with pytest.raises(ValueError, match="suite=dir"):
    model_card.split_flag("heldout", ("suite", "dir"))
  with pytest.raises(ValueError, match="No evaluation.json"):
    model_card.collect_evaluation(str(tmp_path))
  (tmp_path / "evaluation.json").write_text("{not json")
  with pytest.raises(ValueError, match="evaluation.json"):
    model_card.collect_evaluation(str(tmp_path))


def test_a_baseline_not_evaluated_is_no_column_and_a_diverged_one_says_so(evaluation_dir):
  out, _ = evaluation_dir
  evaluation = model_card.collect_evaluation(out)["1x"]
  assert all("adam_cosine" in row for row in evaluation["tasks"].values())
  first = next(iter(evaluation["tasks"].values()))
  first["adam_cosine"] = None  # a diverged baseline is stored as None
  table = "\n".join(model_card._task_table(evaluation))  # pylint: disable=protected-access
  assert "Adam+cosine" in table and "diverged" in table
  for row in evaluation["tasks"].values():
    del row["adam_cosine"]  # a report that never ran adam_cosine
  table = "\n".join(model_card._task_table(evaluation))  # pylint: disable=protected-access
  assert "Adam+cosine" not in table and "diverged" not in table
