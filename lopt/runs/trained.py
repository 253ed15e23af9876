"""Loading a meta-trained optimizer from a ``meta_train`` run directory: its architecture from the run's
``config.gin`` and its theta from the newest (or a chosen) verified checkpoint, without re-running or touching the
workdir, and without disturbing the caller's gin configuration."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import gin
import jax
import numpy as np

from lopt import checkpoints, config
from lopt.architectures.base import LearnedOptimizer
from lopt.types import MetaParams
from lopt.workdir import Workdir


@dataclasses.dataclass(frozen=True)
class TrainedOptimizer:
  """A learned optimizer with its meta-trained theta, ready for ``architecture.optimizer(theta, num_steps=...)``."""

  architecture: LearnedOptimizer
  theta: MetaParams
  step: int
  workdir: str
  config_text: str

  def optimizer(self, *, num_steps: int, **options: Any):
    """The optax transformation of this theta for a run of ``num_steps`` steps; ``options`` (e.g. a ``celo2``
    optimizer's ``learning_rate=`` or ``schedule=``) go to the architecture's ``optimizer``."""
    return self.architecture.optimizer(self.theta, num_steps=num_steps, **options)


def build_architecture(config_path: str) -> LearnedOptimizer:
  """The architecture ``meta_train.architecture`` binds in the gin file ``config_path``, with the file's settings.

  The file is parsed on a private copy of gin's configuration (``config.isolated``): the caller's bindings are
  neither used nor changed.

  Raises:
    lopt.config.ConfigError: when the file cannot be parsed or binds no architecture call.
  """
  with config.isolated():
    gin.clear_config()
    try:
      config.parse([config_path])
      reference = gin.query_parameter("meta_train.architecture")
      if not isinstance(reference, gin.config.ConfigurableReference) or not reference.evaluate:
        raise config.ConfigError(f"{config_path} binds meta_train.architecture to {reference!r}; expected a call "
                                 "such as @architectures.ff().")
      return reference.scoped_configurable_fn()
    except config.ConfigError:
      raise
    except ValueError as e:  # gin's "no binding" error is a ValueError too.
      raise config.ConfigError(f"Cannot build the architecture of {config_path}: {e}") from e


def load_theta(checkpoint_dir: str, architecture: LearnedOptimizer, *, step: int | None = None,
               trust_unverified: bool = False) -> tuple[MetaParams, int]:
  """The theta of a checkpoint (newest verified by default), checked against ``architecture``'s shapes."""
  target = architecture.init(jax.random.key(0))
  try:
    theta, step = checkpoints.restore_entry(checkpoint_dir, "theta", target, step=step,
                                            trust_unverified=trust_unverified)
  except checkpoints.CheckpointError as e:
    if "does not match" in str(e) or "has shape" in str(e):
      raise checkpoints.CheckpointError(f"The theta of {checkpoint_dir} does not fit the architecture "
                                        f"{architecture.name} built from its config: {e}") from e
    raise
  return jax.tree.map(lambda want, got: np.asarray(got, dtype=np.asarray(want).dtype), target, theta), step


def load(workdir: str, *, step: int | None = None, trust_unverified: bool = False) -> TrainedOptimizer:
  """Loads the learned optimizer of ``workdir`` (a ``meta_train`` run directory).

  Args:
    workdir: holds ``config.gin`` and ``checkpoints/`` (``lopt.workdir``).
    step: the checkpoint step to load; default the best theta (``best/``, written by a stability guard) when
      present, else the newest checkpoint whose checksum verifies (a truncated newest checkpoint falls back to the
      previous one, with a warning naming it). The checkpoint is read once.
    trust_unverified: load a checkpoint whose checksum sidecar is missing instead of refusing it.

  Returns:
    A ``TrainedOptimizer``.

  Raises:
    FileNotFoundError: when ``config.gin`` or every checkpoint is missing.
    lopt.checkpoints.CheckpointError: when no checkpoint verifies or its theta does not fit the architecture.
  """
  layout = Workdir(workdir)
  if not os.path.isfile(layout.config):
    raise FileNotFoundError(f"{layout.config} does not exist; is '{workdir}' a meta_train workdir?")
  if not checkpoints.steps_on_disk(layout.checkpoints):
    raise FileNotFoundError(f"No complete checkpoint in {layout.checkpoints}; meta-train first (or wait for the "
                            "first one).")
  architecture = build_architecture(layout.config)
  with open(layout.config, encoding="utf-8") as f:
    config_text = f.read()
  # A run with a stability guard keeps its best theta in best/: that is the run's artefact, unless a step is asked.
  source = layout.best_checkpoints if step is None and checkpoints.latest_step(layout.best_checkpoints) is not None \
      else layout.checkpoints
  theta, step = load_theta(source, architecture, step=step, trust_unverified=trust_unverified)
  return TrainedOptimizer(architecture=architecture, theta=theta, step=int(step), workdir=workdir,
                          config_text=config_text)
