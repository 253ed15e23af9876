"""Meta-trains a grid of gin configurations one after another, each in its own workdir, and summarises them.

  python experiments/sweep.py --gin_config=gin_configs/quickstart.gin --root=/tmp/lopt_sweep \
    --variants=base,gin_configs/ablations/estimator_es.gin --grid='meta_train.seed=0|1'

Each configuration trains in <root>/<name>; running the command again skips finished configurations and resumes
an unfinished one from its checkpoint. <root>/summary.md and summary.json hold the final metrics of every
configuration. docs/evaluation.md describes the ablation files in gin_configs/ablations/.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from lopt import sweep, writers  # noqa: E402

_GIN_CONFIG = flags.DEFINE_multi_string("gin_config", [], "Base gin config file(s) of every configuration.")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Base gin bindings of every configuration.")
_ROOT = flags.DEFINE_string("root", None, "Directory holding one workdir per configuration.", required=True)
_VARIANTS = flags.DEFINE_list("variants", [sweep.BASE], "Gin files layered over the base ('base': none).")
_GRID = flags.DEFINE_multi_string("grid", [], "An axis 'param=value1|value2|...'; repeat for a product grid.")
_WANDB_MODE = flags.DEFINE_enum("wandb_mode", "offline", list(writers.WANDB_MODES), "wandb mode of every run.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Only list the configurations.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    configs = sweep.expand(_VARIANTS.value, _GRID.value)
    for path in _GIN_CONFIG.value:
      if not os.path.isfile(path):
        raise ValueError(f"Gin config file '{path}' does not exist.")
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(f"Sweep of {len(configs)} configurations in {_ROOT.value}:", flush=True)
  for c in configs:
    print(f"  {c.name}: files {list(c.config_files)}, bindings {list(c.bindings)}", flush=True)
  if _DRY_RUN.value:
    return
  records = sweep.run_sweep(configs, _ROOT.value, base_configs=_GIN_CONFIG.value, base_bindings=_GIN_BINDINGS.value,
                            wandb_mode=_WANDB_MODE.value, printer=lambda line: print(line, flush=True))
  print(sweep.format_summary(records), flush=True)


if __name__ == "__main__":
  app.run(main)
