"""Loading a meta-trained optimizer from a ``meta_train`` workdir: its architecture from ``config.gin`` and its theta
from the latest (or a chosen) checkpoint, without re-running or touching the workdir."""

from __future__ import annotations

import dataclasses
import os

import gin
import jax
import numpy as np
from flax import serialization

from lopt import checkpoints, config
from lopt.architectures.base import LearnedOptimizer
from lopt.types import MetaParams

CONFIG_FILE = "config.gin"


@dataclasses.dataclass(frozen=True)
class TrainedOptimizer:
  """A learned optimizer with its meta-trained theta, ready for ``architecture.optimizer(theta, num_steps=...)``."""

  architecture: LearnedOptimizer
  theta: MetaParams
  step: int
  workdir: str
  config_text: str


def _build_architecture(config_path: str) -> LearnedOptimizer:
  gin.clear_config()
  try:
    config.parse([config_path])
    reference = gin.query_parameter("meta_train.architecture")
    if not isinstance(reference, gin.config.ConfigurableReference) or not reference.evaluate:
      raise config.ConfigError(f"{config_path} binds meta_train.architecture to {reference!r}; expected a call "
                               "such as @architectures.ff().")
    return reference.scoped_configurable_fn()
  except ValueError as e:  # gin's "no binding" error is a ValueError too.
    raise config.ConfigError(f"Cannot build the architecture of {config_path}: {e}") from e
  finally:
    # The architecture has read its bindings; leave no config behind to leak into the caller's gin calls.
    gin.clear_config()


def load(workdir: str, *, step: int | None = None) -> TrainedOptimizer:
  """Loads the learned optimizer of ``workdir`` (a ``meta_train`` run directory).

  The gin config is parsed only to build ``meta_train.architecture`` with the run's settings; the current gin
  config is cleared before and after.

  Args:
    workdir: holds ``config.gin`` and ``checkpoints/``.
    step: the checkpoint step to load; default the newest complete one.

  Returns:
    A ``TrainedOptimizer``.

  Raises:
    FileNotFoundError: when ``config.gin`` or every checkpoint is missing.
    lopt.checkpoints.CheckpointError: when the checkpoint is corrupt or its theta does not fit the architecture.
  """
  config_path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} does not exist; is '{workdir}' a meta_train workdir?")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  step = checkpoints.latest_step(ckpt_dir) if step is None else step
  if step is None:
    raise FileNotFoundError(f"No complete checkpoint in {ckpt_dir}; meta-train first (or wait for the first one).")
  architecture = _build_architecture(config_path)
  with open(config_path, encoding="utf-8") as f:
    config_text = f.read()

  # The checkpoint holds the whole meta-training state; read its structure from the file itself, then let
  # ``checkpoints.restore`` verify the checksum against that structure.
  path = checkpoints.checkpoint_path(ckpt_dir, step)
  try:
    with open(path, "rb") as f:
      raw = serialization.msgpack_restore(f.read())
  except Exception as e:  # pylint: disable=broad-except  # msgpack raises several unrelated types.
    raise checkpoints.CheckpointError(f"Cannot read checkpoint {path}: {e}") from e
  state, step = checkpoints.restore(ckpt_dir, raw, step=step)
  if not isinstance(state, dict) or "theta" not in state:
    raise checkpoints.CheckpointError(f"Checkpoint {path} has no 'theta'; is it a meta_train checkpoint?")
  target = architecture.init(jax.random.key(0))
  try:
    theta = serialization.from_state_dict(target, state["theta"])
  except (ValueError, KeyError, TypeError) as e:
    raise checkpoints.CheckpointError(f"theta in {path} does not fit the architecture {architecture.name}: {e}") from e
  for (key_path, want), got in zip(jax.tree_util.tree_flatten_with_path(target)[0], jax.tree.leaves(theta)):
    if np.shape(want) != np.shape(got):
      raise checkpoints.CheckpointError(f"theta{jax.tree_util.keystr(key_path)} in {path} has shape {np.shape(got)}, "
                                        f"the architecture {architecture.name} expects {np.shape(want)}.")
  theta = jax.tree.map(lambda want, got: np.asarray(got, dtype=np.asarray(want).dtype), target, theta)
  return TrainedOptimizer(architecture=architecture, theta=theta, step=int(step), workdir=workdir,
                          config_text=config_text)
