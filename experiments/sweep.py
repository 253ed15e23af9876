"""Meta-trains a grid of gin configurations one after another, each in its own workdir, and summarises them.

  python experiments/sweep.py --gin_config=gin_configs/quickstart.gin --root=/tmp/lopt_sweep \
    --variants=base,gin_configs/ablations/estimator_es.gin --grid='meta_train.seed=0|1'

Each configuration trains in <root>/<name>; running the command again skips finished configurations and resumes
an unfinished one from its checkpoint. <root>/summary.md and summary.json hold the final metrics of every
configuration. docs/evaluation.md describes the ablation files in gin_configs/ablations/.
"""

from absl import app, flags

from lopt import compilation_cache, runs, writers

_GIN_CONFIG = flags.DEFINE_multi_string("gin_config", [], "Base gin config file(s) of every configuration.")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Base gin bindings of every configuration.")
_ROOT = flags.DEFINE_string("root", None, "Directory holding one workdir per configuration.", required=True)
_VARIANTS = flags.DEFINE_list("variants", [runs.sweep.BASE], "Gin files layered over the base ('base': none).")
_GRID = flags.DEFINE_multi_string("grid", [], "An axis 'param=value1|value2|...'; repeat for a product grid.")
_WANDB_MODE = flags.DEFINE_enum("wandb_mode", "offline", list(writers.WANDB_MODES), "wandb mode of every run.")
_COMPILATION_CACHE = flags.DEFINE_string("compilation_cache", None, compilation_cache.FLAG_HELP)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Only list the configurations.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  with runs.user_errors():
    compilation_cache.enable(_COMPILATION_CACHE.value)
    runs.sweep.sweep_from_flags(_ROOT.value, variants=_VARIANTS.value, grid=_GRID.value,
                                base_configs=_GIN_CONFIG.value, base_bindings=_GIN_BINDINGS.value,
                                wandb_mode=_WANDB_MODE.value, dry_run=_DRY_RUN.value,
                                printer=lambda line: print(line, flush=True))


if __name__ == "__main__":
  app.run(main)
