"""Ships a meta_train run's optimizer as a pretrained one: writes lopt/pretrained/<name>.msgpack and its manifest.

  python experiments/export_pretrained.py --workdir=/tmp/lopt_ff_v1 --name=ff_v1

The theta is the run's artefact (``best/`` when a stability guard kept one, else the newest checkpoint); the
architecture and its keyword arguments are read from the run's config.gin. User errors print one line.
"""

import gin
from absl import app, flags

from lopt import config, pretrained, runs
from lopt.runs import trained
from lopt.workdir import Workdir

_WORKDIR = flags.DEFINE_string("workdir", None, "meta_train workdir to export.", required=True)
_NAME = flags.DEFINE_string("name", None, "Name of the shipped optimizer (lopt.pretrained.names()).", required=True)
_DIRECTORY = flags.DEFINE_string("directory", pretrained.PACKAGE_DIR, "Where the weights and manifest go.")
_NOTE = flags.DEFINE_string("note", "", "Free text recorded in the manifest (e.g. the command and machine).")


def architecture_kwargs(config_path: str, architecture: str) -> dict:
  """The keyword arguments config.gin binds for ``architectures.<architecture>`` (JSON-ready)."""
  with config.isolated():
    gin.clear_config()
    config.parse([config_path])
    bindings = gin.get_bindings(f"architectures.{architecture}")
  return {k: list(v) if isinstance(v, tuple) else v for k, v in bindings.items()}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  with runs.user_errors():
    loaded = trained.load(_WORKDIR.value)
    kwargs = architecture_kwargs(Workdir(_WORKDIR.value).config, loaded.architecture.name)
    path = pretrained.save(_NAME.value, architecture=loaded.architecture.name, kwargs=kwargs, theta=loaded.theta,
                           source={"workdir": _WORKDIR.value, "step": loaded.step, "note": _NOTE.value},
                           directory=_DIRECTORY.value)
    print(f"Wrote {path} (theta of step {loaded.step}, {loaded.architecture.name} {kwargs})")


if __name__ == "__main__":
  app.run(main)
