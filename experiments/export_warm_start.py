"""Exports a meta_train run's warm start: theta, outer-optimizer state and step, a few KB to commit.

  python experiments/export_warm_start.py --workdir=/tmp/lopt_celo2_v1 --out=gin_configs/pretrained/celo2_v1_warm

A new workdir continues the run from it (its inner tasks start afresh; docs/reliability.md):

  python experiments/meta_train.py --gin_config=gin_configs/pretrained/celo2_v1.gin --workdir=/tmp/lopt_celo2_v1b \\
    --gin_bindings="meta_train.warm_start = 'gin_configs/pretrained/celo2_v1_warm'"
"""

from absl import app, flags

from lopt import runs
from lopt.meta_trainers import warm_start
from lopt.workdir import Workdir

_WORKDIR = flags.DEFINE_string("workdir", None, "meta_train workdir to export from.", required=True)
_OUT = flags.DEFINE_string("out", None, "Directory of the warm start (its older warm start is replaced).",
                           required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the newest that verifies.", lower_bound=0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  with runs.user_errors():
    path = warm_start.export(Workdir(_WORKDIR.value).checkpoints, _OUT.value, step=_STEP.value)
  print(f"Wrote {path}")


if __name__ == "__main__":
  app.run(main)
