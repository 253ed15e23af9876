"""A meta-trained optimizer as the outer optimizer of another meta-training (Metz et al. 2020, section 6).

``meta_train`` calls its outer optimizer's ``update`` with the meta-loss as ``loss=``, so a learned optimizer
reads the outer objective the way it reads a task's loss, and with ``num_steps`` the number of outer steps it
knows the outer run's progress. Its state is part of ``meta_train``'s checkpoint, so a resumed self-training run is
bit-identical to an uninterrupted one.

In gin::

    meta_train.meta_optimizer = @learned_meta_optimizer()
    learned_meta_optimizer.workdir = '/tmp/lopt_quickstart'
    learned_meta_optimizer.num_steps = %NUM_OUTER_STEPS
"""

from __future__ import annotations

import gin
import optax

from lopt import arguments
from lopt import pretrained as shipped
from lopt.runs import trained


def learned_meta_optimizer(*, num_steps: int, workdir: str | None = None, pretrained: str | None = None,
                           step: int | None = None,
                           clip_norm: float | None = 1.0) -> optax.GradientTransformationExtraArgs:
  """The trained optimizer of ``workdir`` (or a shipped one), told that the outer run lasts ``num_steps`` steps.

  Args:
    workdir: a ``meta_train`` run directory whose checkpointed theta drives the outer updates.
    pretrained: instead of ``workdir``, a shipped optimizer (``lopt.pretrained.names()``).
    num_steps: the outer run's number of steps (bind ``%NUM_OUTER_STEPS``).
    step: which checkpoint of ``workdir`` (default: the newest verified one).
    clip_norm: clip the meta-gradient's global norm first (as ``default_meta_optimizer`` does); None: no clip.

  Raises:
    ValueError: for a bad ``num_steps`` or ``clip_norm``; FileNotFoundError or CheckpointError (naming the
      files) when ``workdir`` holds no usable optimizer or its theta does not fit its architecture.
  """
  num_steps = arguments.integer("learned_meta_optimizer.num_steps", num_steps, minimum=1)
  clip_norm = arguments.optional_real("learned_meta_optimizer.clip_norm", clip_norm, minimum=0.0,
                                      open_minimum=True)
  if (workdir is None) == (pretrained is None):
    raise arguments.ArgumentError("learned_meta_optimizer.workdir",
                                  "give a run directory or a pretrained name (learned_meta_optimizer.pretrained), "
                                  f"exactly one; got {workdir!r} and {pretrained!r}")
  if pretrained is not None:
    learned = shipped.optimizer(pretrained, num_steps=num_steps)
  else:
    if not isinstance(workdir, str) or not workdir:
      raise arguments.ArgumentError("learned_meta_optimizer.workdir", f"must be a run directory, got {workdir!r}")
    learned = trained.load(workdir, step=step).optimizer(num_steps=num_steps)
  if clip_norm is None:
    return learned
  return optax.chain(optax.with_extra_args_support(optax.clip_by_global_norm(clip_norm)), learned)


gin.register("learned_meta_optimizer")(learned_meta_optimizer)
