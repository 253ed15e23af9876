"""Truncation: how inner episodes are cut into K-step truncations, and the settings every truncated estimator shares.

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

from lopt import arguments
from lopt.meta_trainers import objectives
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


@dataclasses.dataclass(frozen=True)
class Truncation:
  """The settings shared by estimators that step a batch of persistent tasks K steps at a time, validated once.

  Attributes:
    num_tasks: tasks trained in parallel.
    truncation_length: inner steps per truncation (K).
    horizon: inner steps per episode, rounded up to a multiple of K; the longest one for ``"log_uniform"``.
    schedule: ``"constant"``, ``"log_uniform"`` or ``"never_ending"`` (see ``make``).
    min_horizon: shortest episode of ``"log_uniform"``.
    stagger: start the first episodes at different points so that tasks do not all reset together.
    objective: ``"mean"`` or ``"final"`` (see ``objectives``).
    meta_loss_split: data split scoring each inner step (``"train"`` or ``"outer_valid"``).
    max_loss: a task whose normalised objective exceeds this (or is not finite) is masked out and restarted.
    valid_every: inner steps between outer-validation losses fed to architectures that read ``valid_loss``
      (``unroll.unroll``); 0 turns feeding off.
    owner: how errors name the settings' parameters, e.g. ``"estimators.pes"`` (not part of the value).
  """

  num_tasks: int = 8
  truncation_length: int = 10
  horizon: int = 200
  schedule: str = "constant"
  min_horizon: int | None = None
  stagger: bool = True
  objective: str = "mean"
  meta_loss_split: str = "train"
  max_loss: float = 1e3
  # One extra forward pass per 10 inner steps (about 3% of their cost) keeps the input current within a truncation.
  valid_every: int = 10
  owner: str = dataclasses.field(default="truncation", compare=False, repr=False)

  def __post_init__(self):
    name = lambda param: f"{self.owner}.{param}"
    set_ = lambda field, value: object.__setattr__(self, field, value)
    set_("num_tasks", arguments.integer(name("num_tasks"), self.num_tasks, minimum=1))
    k = arguments.integer(name("truncation_length"), self.truncation_length, minimum=1)
    set_("truncation_length", k)
    set_("schedule", arguments.choice(name("schedule"), self.schedule, SCHEDULES))
    horizon = arguments.integer(name("horizon"), self.horizon, minimum=1)
    if self.schedule != "never_ending" and k > horizon:
      raise arguments.ArgumentError(name("truncation_length"), f"{k} is longer than the horizon ({horizon}); "
                                    "a truncation must fit in an episode: shorten it or lengthen the horizon.")
    set_("horizon", round_horizon(horizon, k))
    min_horizon = arguments.optional_integer(name("min_horizon"), self.min_horizon, minimum=1)
    if min_horizon is not None and min_horizon > horizon:
      raise arguments.ArgumentError(name("min_horizon"), f"{min_horizon} exceeds the horizon ({horizon}).")
    set_("min_horizon", min_horizon)
    set_("stagger", arguments.boolean(name("stagger"), self.stagger))
    set_("objective", arguments.choice(name("objective"), self.objective, objectives.OBJECTIVES))
    set_("meta_loss_split", arguments.choice(name("meta_loss_split"), self.meta_loss_split, objectives.SPLITS))
    set_("max_loss", arguments.real(name("max_loss"), self.max_loss, minimum=0.0, open_minimum=True))
    set_("valid_every", arguments.integer(name("valid_every"), self.valid_every, minimum=0))

  @property
  def episodes(self) -> TruncationSchedule:
    """The schedule that draws episode lengths."""
    return make(self.schedule, truncation_length=self.truncation_length, horizon=self.horizon,
                min_horizon=self.min_horizon)

  def full_horizon(self) -> "Truncation":
    """The same settings with one truncation covering the whole (constant) episode."""
    return dataclasses.replace(self, truncation_length=self.horizon)
