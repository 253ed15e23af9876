"""Truncation schedules: how long each inner episode lasts.

Every horizon a schedule draws is a positive multiple of the truncation length K, so a task only reaches its
horizon between truncations and resets never happen inside one (see ``unroll``); this is what keeps PES's
accumulated perturbations exact. A schedule also draws the *first* horizon of each task: a random number of
truncations up to a full episode, so that a batch of tasks does not reset all at once (staggered starts) and no
compute is spent on burn-in.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from lopt.meta_trainers import objectives
from lopt.meta_trainers.base import GradientEstimator
from lopt.types import PRNGKey

# A "never-ending" episode: long enough that no run reaches it, small enough for int32 step counters.
NEVER_ENDING_TRUNCATIONS = 2**20


def round_horizon(horizon: int, truncation_length: int) -> int:
  """Rounds ``horizon`` up to a multiple of ``truncation_length``."""
  if horizon <= 0 or truncation_length <= 0:
    raise ValueError(f"horizon ({horizon}) and truncation_length ({truncation_length}) must be positive.")
  return -(-horizon // truncation_length) * truncation_length


@dataclasses.dataclass(frozen=True)
class TruncationSchedule:
  """Episode lengths in whole truncations, drawn log-uniformly from ``[min_truncations, max_truncations]``.

  Attributes:
    truncation_length: inner steps per truncation (K).
    min_truncations: fewest truncations in an episode.
    max_truncations: most truncations in an episode; equal to ``min_truncations`` for a constant schedule.
    name: ``"constant"``, ``"log_uniform"`` or ``"never_ending"`` (for metrics and messages).
  """

  truncation_length: int
  min_truncations: int
  max_truncations: int
  name: str = "constant"

  def __post_init__(self):
    if self.truncation_length < 1 or not 1 <= self.min_truncations <= self.max_truncations:
      raise ValueError("Need truncation_length >= 1 and 1 <= min_truncations <= max_truncations, got "
                       f"{self.truncation_length}, {self.min_truncations}, {self.max_truncations}.")

  @property
  def max_horizon(self) -> int:
    """The longest episode in inner steps."""
    return self.max_truncations * self.truncation_length

  @property
  def is_constant(self) -> bool:
    return self.min_truncations == self.max_truncations

  def sample(self, key: PRNGKey, shape: tuple[int, ...] = ()) -> jax.Array:
    """Horizons (int32, multiples of K) of fresh episodes."""
    if self.is_constant:
      return jnp.full(shape, self.max_horizon, jnp.int32)
    log_n = jax.random.uniform(key, shape, minval=math.log(self.min_truncations),
                               maxval=math.log(self.max_truncations + 1))
    n = jnp.clip(jnp.floor(jnp.exp(log_n)), self.min_truncations, self.max_truncations).astype(jnp.int32)
    return n * self.truncation_length

  def sample_first(self, key: PRNGKey, shape: tuple[int, ...] = (), *, stagger: bool = True) -> jax.Array:
    """Horizons of the first episodes; with ``stagger``, a uniform number of truncations up to a full episode."""
    horizon_key, stagger_key = jax.random.split(key)
    full = self.sample(horizon_key, shape)
    if not stagger or self.name == "never_ending":
      return full
    # A shortened first episode staggers the resets without spending compute on burn-in.
    n = jax.random.randint(stagger_key, shape, 1, full // self.truncation_length + 1)
    return (n * self.truncation_length).astype(jnp.int32)


def constant(horizon: int, truncation_length: int) -> TruncationSchedule:
  """Every episode lasts ``horizon`` steps (rounded up to a multiple of ``truncation_length``)."""
  n = round_horizon(horizon, truncation_length) // truncation_length
  return TruncationSchedule(truncation_length, n, n, "constant")


def log_uniform(min_horizon: int, max_horizon: int, truncation_length: int) -> TruncationSchedule:
  """Episode lengths log-uniform in ``[min_horizon, max_horizon]`` (each rounded up to a multiple of K)."""
  if min_horizon > max_horizon:
    raise ValueError(f"min_horizon ({min_horizon}) must not exceed max_horizon ({max_horizon}).")
  lo = round_horizon(min_horizon, truncation_length) // truncation_length
  hi = round_horizon(max_horizon, truncation_length) // truncation_length
  return TruncationSchedule(truncation_length, lo, hi, "log_uniform")


def never_ending(truncation_length: int) -> TruncationSchedule:
  """Tasks never reach their horizon; they restart only when masked (diverged).

  The optimizer is told a horizon of ``NEVER_ENDING_TRUNCATIONS * K`` steps, so progress features stay near 0.
  """
  return TruncationSchedule(truncation_length, NEVER_ENDING_TRUNCATIONS, NEVER_ENDING_TRUNCATIONS, "never_ending")


SCHEDULES = ("constant", "log_uniform", "never_ending")


def make(name: str, *, truncation_length: int, horizon: int, min_horizon: int | None = None) -> TruncationSchedule:
  """Builds a schedule by name (the form estimator factories and gin files use).

  Args:
    name: one of ``SCHEDULES``.
    truncation_length: K.
    horizon: the (maximum) episode length.
    min_horizon: shortest episode of ``"log_uniform"``; default ``horizon // 10`` (at least one truncation).
  """
  if name == "constant":
    return constant(horizon, truncation_length)
  if name == "log_uniform":
    lo = min_horizon if min_horizon is not None else max(horizon // 10, truncation_length)
    return log_uniform(lo, horizon, truncation_length)
  if name == "never_ending":
    return never_ending(truncation_length)
  raise ValueError(f"Unknown truncation schedule '{name}'. Schedules: {', '.join(SCHEDULES)}.")


class TruncatedEstimator(GradientEstimator):
  """Truncation settings shared by estimators that step persistent tasks K steps at a time.

  Subclasses are frozen dataclasses with the fields ``num_tasks_``, ``truncation_length``, ``horizon``,
  ``schedule``, ``min_horizon``, ``objective`` and ``meta_loss_split``; their ``__post_init__`` calls
  ``_check_truncation`` after checking their own fields.
  """

  @property
  def num_tasks(self) -> int:
    return self.num_tasks_

  @property
  def truncation_schedule(self) -> TruncationSchedule:
    return make(self.schedule, truncation_length=self.truncation_length, horizon=self.horizon,
                min_horizon=self.min_horizon)

  def _check_truncation(self) -> None:
    """Validates the objective and schedule early and rounds the horizon up to a multiple of K."""
    objectives.check(self.objective, self.meta_loss_split)
    object.__setattr__(self, "horizon", round_horizon(self.horizon, self.truncation_length))
    self.truncation_schedule  # pylint: disable=pointless-statement
