"""Meta-trains a learned optimizer as configured by gin.

  python experiments/meta_train.py --gin_config=gin_configs/quickstart.gin --workdir=/tmp/lopt_quickstart

Running the same command again resumes from the workdir's latest checkpoint (a finished run is not evaluated again
unless --reevaluate). On CPU the task batch is split over
one host device per core unless XLA_FLAGS sets a device count. Several hosts: run the same command on each with
--coordinator_address, --num_processes and --process_id (or --distributed on a cluster JAX detects, e.g. Slurm or
a TPU pod slice); see docs/distributed.md. Compiled programs are kept in JAX's persistent compilation cache
(~/.cache/lopt/jax; --compilation_cache=DIR or LOPT_COMPILATION_CACHE=DIR moves it, =off disables it), so a second
start of the same config compiles nothing. User errors print one line `error: ...` and exit with status 2.
"""

from absl import app, flags

from lopt import compilation_cache, runs, writers

_GIN_CONFIG = flags.DEFINE_multi_string("gin_config", [], "Gin config file(s), parsed in order.")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. 'meta_train.seed = 1'.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics and config.gin.", required=True)
_WANDB_MODE = flags.DEFINE_enum("wandb_mode", "offline", list(writers.WANDB_MODES),
                                "wandb mode; offline needs no network.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for several processes.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (several hosts).", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 <= id < num_processes.",
                                   lower_bound=0)
_REEVALUATE = flags.DEFINE_bool("reevaluate", False, "Run the final evaluation again when the run is already "
                                 "finished (same as --gin_bindings='meta_train.reevaluate = True').")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Start jax.distributed with JAX's cluster auto-detection "
                                 "(Slurm, Open MPI, Cloud TPU pod slices) when the three flags above are not given.")
_COMPILATION_CACHE = flags.DEFINE_string("compilation_cache", None, compilation_cache.FLAG_HELP)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  with runs.user_errors():
    bindings = _GIN_BINDINGS.value + (["meta_train.reevaluate = True"] if _REEVALUATE.value else [])
    runs.launch(_WORKDIR.value, gin_configs=_GIN_CONFIG.value, gin_bindings=bindings,
                wandb_mode=_WANDB_MODE.value, coordinator_address=_COORDINATOR.value,
                num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value, distributed=_DISTRIBUTED.value,
                compilation_cache_dir=_COMPILATION_CACHE.value)


if __name__ == "__main__":
  app.run(main)
