"""Plots a meta_train run's meta-loss and meta-eval curves from its metrics.jsonl into a small PNG.

  python experiments/plot_meta_training.py --workdir=/tmp/lopt_ff_v1 --out=docs/images/pretrained_ff_v1_curves.png
"""

from absl import app, flags

from lopt import runs, writers
from lopt.evaluation import plots
from lopt.workdir import Workdir

_WORKDIR = flags.DEFINE_string("workdir", None, "meta_train workdir.", required=True)
_OUT = flags.DEFINE_string("out", None, "PNG to write.", required=True)
_METRIC = flags.DEFINE_string("metric", "meta_eval/mean/final_train_loss_vs_adam", "The meta-eval scalar to plot.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  with runs.user_errors():
    rows = writers.read_jsonl(Workdir(_WORKDIR.value).metrics)
    print("Wrote", plots.meta_training_curves(rows, eval_metric=_METRIC.value, path=_OUT.value))


if __name__ == "__main__":
  app.run(main)
