"""Hand-designed baselines as ``LearnedOptimizer`` plugins that wrap optax (theta empty or a few scalars)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lopt import arguments
from lopt.architectures import masked_stats
from lopt.architectures.base import LearnedOptimizer
from lopt.registry import register
from lopt.types import MetaParams, PRNGKey


def _hyper(owner: str, name: str, value: Any, **bounds: Any) -> Any:
  """``value`` checked like ``arguments.real``; a JAX array passes as it is.

  The tuned baselines build these optimizers with a traced learning rate (one lane per grid value); a traced
  value has no Python value to check, and its grid was checked where it was given.
  """
  if isinstance(value, jax.Array):
    return value
  return arguments.real(f"architectures.{owner}.{name}", value, **bounds)


def _adam_hypers(owner: str, learning_rate: Any, b1: Any, b2: Any, eps: Any, *, positive_eps: bool = False
                 ) -> tuple[Any, float, float, float]:
  """Adam's hyperparameters checked: a positive step, decays in [0, 1), a non-negative (or positive) epsilon."""
  return (_hyper(owner, "learning_rate", learning_rate, minimum=0.0, open_minimum=True),
          _hyper(owner, "b1", b1, minimum=0.0, maximum=1.0, open_maximum=True),
          _hyper(owner, "b2", b2, minimum=0.0, maximum=1.0, open_maximum=True),
          _hyper(owner, "eps", eps, minimum=0.0, open_minimum=positive_eps))


def _with_extra_args(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Lets a plain optax transformation accept (and ignore) the ``loss`` keyword learned optimizers get, and the
  ``mask`` of a padded structure (inactive entries get a zero update; see ``masked_stats``)."""
  return masked_stats.masked_updates(tx)


def _in_float32(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """Runs ``tx`` on float32 copies of gradients and parameters and casts updates back to the gradients' dtypes.

  Hyperparameters that are traced float32 scalars (as theta is) would otherwise promote the moments of bfloat16
  parameters to float32 after the first step, changing the state's structure mid-run.
  """
  f32 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)

  def init(params):
    return tx.init(f32(params))

  def update(updates, state, params=None):
    new, state = tx.update(f32(updates), state, None if params is None else f32(params))
    return jax.tree.map(lambda u, g: u.astype(g.dtype), new, updates), state

  return optax.GradientTransformation(init, update)


@register("architecture", "adam")
def adam(*, learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> LearnedOptimizer:
  """optax.adam with fixed hyperparameters (empty theta)."""
  learning_rate, b1, b2, eps = _adam_hypers("adam", learning_rate, b1, b2, eps)

  def init(key: PRNGKey) -> MetaParams:
    del key
    return {}

  def optimizer(theta: MetaParams, *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs:
    del theta, num_steps
    return _with_extra_args(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))

  return LearnedOptimizer(name="adam", init=init, optimizer=optimizer)


@register("architecture", "learnable_adam")
def learnable_adam(*, learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8) -> LearnedOptimizer:
  """Adam whose theta is (log learning rate, logits of b1 and b2, log epsilon)."""
  # theta holds logarithms and logits: b1 = 0 or eps = 0 would start it at -inf.
  learning_rate, b1, b2, eps = _adam_hypers("learnable_adam", learning_rate, b1, b2, eps, positive_eps=True)
  if b1 == 0 or b2 == 0:
    raise arguments.ArgumentError(f"architectures.learnable_adam.{'b1' if b1 == 0 else 'b2'}",
                                  "must be > 0 and < 1 (theta holds its logit), got 0.")

  def init(key: PRNGKey) -> MetaParams:
    del key
    logit = lambda b: jnp.log(b) - jnp.log1p(-b)
    return {"log_lr": jnp.log(jnp.float32(learning_rate)), "b1_logit": logit(jnp.float32(b1)),
            "b2_logit": logit(jnp.float32(b2)), "log_eps": jnp.log(jnp.float32(eps))}

  def optimizer(theta: MetaParams, *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs:
    del num_steps
    tx = optax.chain(
        optax.scale_by_adam(b1=jax.nn.sigmoid(theta["b1_logit"]), b2=jax.nn.sigmoid(theta["b2_logit"]),
                            eps=jnp.exp(theta["log_eps"])),
        optax.scale_by_learning_rate(jnp.exp(theta["log_lr"])))
    return _with_extra_args(_in_float32(tx))

  return LearnedOptimizer(name="learnable_adam", init=init, optimizer=optimizer)


def _fixed(name: str, tx: optax.GradientTransformation) -> LearnedOptimizer:
  """A hand-designed optimizer with empty theta."""

  def init(key: PRNGKey) -> MetaParams:
    del key
    return {}

  def optimizer(theta: MetaParams, *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs:
    del theta, num_steps
    return _with_extra_args(tx)

  return LearnedOptimizer(name=name, init=init, optimizer=optimizer)


@register("architecture", "radam")
def radam(*, learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          threshold: float = 5.0) -> LearnedOptimizer:
  """optax.radam (Rectified Adam, Liu et al. 2019) with fixed hyperparameters (empty theta)."""
  learning_rate, b1, b2, eps = _adam_hypers("radam", learning_rate, b1, b2, eps)
  threshold = _hyper("radam", "threshold", threshold, minimum=0.0)
  return _fixed("radam", optax.radam(learning_rate, b1=b1, b2=b2, eps=eps, threshold=threshold))


@register("architecture", "adamw")
def adamw(*, learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 1e-4) -> LearnedOptimizer:
  """optax.adamw (decoupled weight decay) with fixed hyperparameters (empty theta)."""
  learning_rate, b1, b2, eps = _adam_hypers("adamw", learning_rate, b1, b2, eps)
  weight_decay = _hyper("adamw", "weight_decay", weight_decay, minimum=0.0)
  return _fixed("adamw", optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))


@register("architecture", "sgd_momentum")
def sgd_momentum(*, learning_rate: float = 1e-2, momentum: float = 0.9, nesterov: bool = False) -> LearnedOptimizer:
  """optax.sgd with (heavy-ball or Nesterov) momentum and fixed hyperparameters (empty theta)."""
  learning_rate = _hyper("sgd_momentum", "learning_rate", learning_rate, minimum=0.0, open_minimum=True)
  momentum = _hyper("sgd_momentum", "momentum", momentum, minimum=0.0, maximum=1.0, open_maximum=True)
  nesterov = arguments.boolean("architectures.sgd_momentum.nesterov", nesterov)
  return _fixed("sgd_momentum", optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))
