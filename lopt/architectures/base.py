"""The ``LearnedOptimizer`` interface.

A learned optimizer is a pair of functions: ``init(key) -> theta`` creates meta-parameters, and
``optimizer(theta, num_steps=...)`` turns them into an ordinary ``optax.GradientTransformationExtraArgs`` whose
``update(grads, state, params, *, loss)`` takes the current training loss as a keyword argument. There is no private
optimizer base: once given theta, a learned optimizer is plain optax and composes with ``optax.chain``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import optax

from lopt import arguments
from lopt.types import MetaParams, PRNGKey


@dataclasses.dataclass(frozen=True)
class LearnedOptimizer:
  """A learned (or hand-designed) optimizer.

  Attributes:
    name: the architecture's registered name.
    init: ``init(key) -> theta``.
    optimizer: ``optimizer(theta, *, num_steps) -> optax.GradientTransformationExtraArgs``. ``num_steps`` is the
      length of the training run (an int, or a traced scalar when tasks have different horizons); the optimizer
      reads training progress as ``state step / num_steps``.
    reads_valid_loss: whether ``update`` reads ``valid_loss=`` (an outer-validation loss). Inner loops compute
      that loss, an extra forward pass, only for architectures that read it; others never receive it.
  """

  name: str
  init: Callable[[PRNGKey], MetaParams]
  optimizer: Callable[..., optax.GradientTransformationExtraArgs]
  reads_valid_loss: bool = False

  def num_meta_parameters(self) -> int:
    """Number of scalars in theta (computed abstractly, without running init)."""
    shapes = jax.eval_shape(self.init, jax.random.key(0))
    return int(sum(x.size for x in jax.tree.leaves(shapes)))


def check_step_arguments(owner: str, initial_step: float, magnitude_scale: float, direction_scale: float,
                         output_init_scale: float, eps: float) -> tuple[float, float, float, float, float]:
  """The step-rule arguments the learned optimizers share, checked and returned in the same order.

  ``initial_step`` and ``eps`` must be positive (theta holds ``log(initial_step)``; ``eps`` keeps divisions finite),
  the scales non-negative (0 switches that output off). ``owner`` is e.g. ``"architectures.ff"``.
  """
  positive = dict(minimum=0.0, open_minimum=True)
  return (arguments.real(f"{owner}.initial_step", initial_step, **positive),
          arguments.real(f"{owner}.magnitude_scale", magnitude_scale, minimum=0.0),
          arguments.real(f"{owner}.direction_scale", direction_scale, minimum=0.0),
          arguments.real(f"{owner}.output_init_scale", output_init_scale, minimum=0.0),
          arguments.real(f"{owner}.eps", eps, **positive))


def check_decay(name: str, value: float, *, open_minimum: bool = False) -> float:
  """A decay in [0, 1), or in (0, 1) with ``open_minimum`` (where theta holds its logit)."""
  return arguments.real(name, value, minimum=0.0, maximum=1.0, open_minimum=open_minimum, open_maximum=True)
