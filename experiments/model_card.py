"""Regenerates a shipped optimizer's model card from its run and its evaluations (lopt/evaluation/model_card.py).

  python experiments/model_card.py --name=celo2_v1 --recipe=docs/pretrained/celo2_v1_recipe.json \
    --workdir=/tmp/lopt_celo2_v1 --evaluation=heldout=/tmp/celo2_v1_heldout \
    --evaluation=validation=/tmp/celo2_v1_validation --evaluation=default=/tmp/celo2_v1_default \
    --ablation="init (0 steps)=validation=/tmp/celo2_init_validation"

Writes docs/pretrained/<name>.json (the results) and docs/pretrained/<name>.md (the card rendered from them) and,
with --workdir, the meta-training figure docs/images/pretrained_<name>_curves.png.
"""

from absl import app, flags

from lopt import runs
from lopt.evaluation import model_card as card

_NAME = flags.DEFINE_string("name", None, "The shipped optimizer (lopt.pretrained.names()).", required=True)
_RECIPE = flags.DEFINE_string("recipe", None, "JSON file: the recipe facts (gin file, command, wall time, load, "
                              "machine) and optional 'summary' and 'notes'.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The meta_train run directory (its metrics.jsonl gives the curves).")
_EVALUATION = flags.DEFINE_multi_string("evaluation", [], "suite=evaluate.py output directory (all its horizons).")
_ABLATION = flags.DEFINE_multi_string("ablation", [], "label=suite=evaluate.py output directory (1x, hparam_free).")
_ABLATION_NOTE = flags.DEFINE_string("ablation_note", "", "One paragraph above the ablation table.")
_OUT = flags.DEFINE_string("out", "docs/pretrained", "Directory of the card's .json and .md.")
_FIGURE_DIR = flags.DEFINE_string("figure_dir", "docs/images", "Directory of the meta-training figure.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  with runs.user_errors():
    results = card.build(
        _NAME.value, recipe_path=_RECIPE.value, workdir=_WORKDIR.value,
        evaluations=[card.split_flag(v, ("suite", "dir")) for v in _EVALUATION.value],
        ablations=[card.split_flag(v, ("label", "suite", "dir")) for v in _ABLATION.value],
        ablation_note=_ABLATION_NOTE.value, figure_dir=_FIGURE_DIR.value, card_dir=_OUT.value)
    json_path, md_path = card.write(results, _OUT.value)
  print(f"Wrote {json_path} and {md_path}")


if __name__ == "__main__":
  app.run(main)
