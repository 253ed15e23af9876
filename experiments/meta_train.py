"""Meta-trains a learned optimizer as configured by gin.

  python experiments/meta_train.py --gin_config=gin_configs/quickstart.gin --workdir=/tmp/lopt_quickstart

Running the same command again resumes from the workdir's latest checkpoint.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
import gin  # noqa: E402

from lopt import checkpoints, config  # noqa: E402

_GIN_CONFIG = flags.DEFINE_multi_string("gin_config", [], "Gin config file(s), parsed in order.")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. 'meta_train.seed = 1'.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.gin.",
                               required=True)
_WANDB_MODE = flags.DEFINE_enum("wandb_mode", "offline", ["offline", "online", "disabled"],
                                "wandb mode; offline needs no network.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    config.parse(_GIN_CONFIG.value, _GIN_BINDINGS.value)
    checkpoints.ensure_writable_dir(_WORKDIR.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  config_text = gin.config_str()
  with open(os.path.join(_WORKDIR.value, "config.gin"), "w") as f:
    f.write(config_text)
  result = config.configured("meta_train")(workdir=_WORKDIR.value, wandb_mode=_WANDB_MODE.value,
                                           config_text=config_text)
  with open(os.path.join(_WORKDIR.value, "config.gin"), "w") as f:
    f.write(gin.operative_config_str())
  if result.interrupted:
    logging.info("Interrupted at step %d; run the same command to resume.", result.step)
  else:
    logging.info("Done at step %d; final metrics %s", result.step, result.metrics)


if __name__ == "__main__":
  app.run(main)
