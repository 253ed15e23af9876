"""Meta-trains a learned optimizer as configured by gin.

  python experiments/meta_train.py --gin_config=gin_configs/quickstart.gin --workdir=/tmp/lopt_quickstart

Running the same command again resumes from the workdir's latest checkpoint. On CPU the task batch is split over
one host device per core unless XLA_FLAGS sets a device count. Several hosts: run the same command on each with
--coordinator_address, --num_processes and --process_id (or --distributed on a cluster JAX detects, e.g. Slurm or
a TPU pod slice); see docs/distributed.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
import gin  # noqa: E402

from lopt import checkpoints, config  # noqa: E402
from lopt.meta_trainers import sharding  # noqa: E402

_GIN_CONFIG = flags.DEFINE_multi_string("gin_config", [], "Gin config file(s), parsed in order.")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. 'meta_train.seed = 1'.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.gin.",
                               required=True)
_WANDB_MODE = flags.DEFINE_enum("wandb_mode", "offline", ["offline", "online", "disabled"],
                                "wandb mode; offline needs no network.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for several processes.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (several hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 <= id < num_processes.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Start jax.distributed with JAX's cluster auto-detection "
                                 "(Slurm, Open MPI, Cloud TPU pod slices) when the three flags above are not given.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  # Both must happen before JAX starts its backends.
  cores = sharding.use_all_cpu_cores()
  if cores:
    logging.info("Using %d host CPU devices (one per core); set XLA_FLAGS to choose another count.", cores)
  sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                  auto_detect=_DISTRIBUTED.value)
  try:
    config.parse(_GIN_CONFIG.value, _GIN_BINDINGS.value)
    checkpoints.ensure_writable_dir(_WORKDIR.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  config_text = gin.config_str()
  config_path = os.path.join(_WORKDIR.value, "config.gin")
  if sharding.is_main_process():
    with open(config_path, "w") as f:
      f.write(config_text)
  result = config.configured("meta_train")(workdir=_WORKDIR.value, wandb_mode=_WANDB_MODE.value,
                                           config_text=config_text)
  if sharding.is_main_process():
    with open(config_path, "w") as f:
      f.write(gin.operative_config_str())
  if result.interrupted:
    logging.info("Interrupted at step %d; run the same command to resume.", result.step)
  else:
    logging.info("Done at step %d; final metrics %s", result.step, result.metrics)


if __name__ == "__main__":
  app.run(main)
