"""Hand-designed baselines as ``LearnedOptimizer`` plugins that wrap optax (theta empty or a few scalars)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lopt.architectures.base import LearnedOptimizer
from lopt.registry import register
from lopt.types import MetaParams, PRNGKey


def _with_extra_args(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Lets a plain optax transformation accept (and ignore) the ``loss`` keyword learned optimizers get."""
  return optax.with_extra_args_support(tx)


@register("architecture", "adam")
def adam(*, learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> LearnedOptimizer:
  """optax.adam with fixed hyperparameters (empty theta)."""

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
    return _with_extra_args(tx)

  return LearnedOptimizer(name="learnable_adam", init=init, optimizer=optimizer)
