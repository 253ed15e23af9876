"""The hand-designed optimizers a learned optimizer is evaluated against, all from optax.

Tuned baselines (Adam, RAdam, AdamW, SGD with momentum) wrap the ``lopt.architectures.baselines`` plugins and carry
a learning-rate grid; Adam with cosine decay (``adam_cosine``) decays its peak learning rate to zero over the scored
horizon, the fair comparison for a learned optimizer that knows its ``num_steps``. ``training.train_stacked``
trains every baseline at every grid value in one compile, and the tuned value per task is chosen afterwards
(``speedup.best_final``). Of ``optax.contrib``, the learning-rate-free Prodigy and D-Adaptation AdamW run at their
defaults; schedule-free AdamW (free of a schedule, not of a step size) is tuned over Adam's grid and evaluated at
its averaged iterate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import optax
from optax import contrib

from lopt.architectures import baselines
from lopt.evaluation.training import EvalParams

# Half-decade grids over five decades. On lopt's suites the 0.1.0 grids (1e-4..0.1) put RAdam's and schedule-free
# AdamW's best value at the top end on most tasks; these reach a decade further on both sides. A grid can still be
# too narrow for some task: ``edge_hit`` detects it and the report marks it, so no table hides it.
ADAM_LEARNING_RATES: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
SGD_LEARNING_RATES: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0)


@dataclasses.dataclass(frozen=True)
class Baseline:
  """A baseline optimizer.

  Attributes:
    name: display name.
    make: ``(learning_rate, num_steps) -> optax transformation``; the learning rate is a traced scalar (or None
      for optimizers without a grid) and ``update`` accepts ``loss=``.
    learning_rates: the grid to tune over; empty for hyperparameter-free optimizers.
    eval_params: ``(opt_state, params) -> params`` to evaluate, when not the iterate itself.
    scheduled: ``make`` gets the scored horizon (the learned optimizer's ``num_steps``) rather than the longer
      baseline budget, so a decay schedule ends where the losses are compared.
  """

  name: str
  make: Callable[[Any, int], optax.GradientTransformationExtraArgs]
  learning_rates: tuple[float, ...] = ()
  eval_params: EvalParams | None = None
  scheduled: bool = False

  @property
  def tuned(self) -> bool:
    return bool(self.learning_rates)


def edge_hit(grid: Sequence[float], best: float) -> str | None:
  """``"low"`` or ``"high"`` when ``best`` is the smallest or largest value of ``grid`` (a wider grid might do
  better), else None; a one-value grid has no interior, so it is always an edge (``"low"``)."""
  values = sorted(float(v) for v in grid)
  if not values or float(best) not in values:
    raise ValueError(f"best={best!r} is not a value of the grid {list(grid)}.")
  if float(best) == values[0]:
    return "low"
  return "high" if float(best) == values[-1] else None


def _plugin(factory: Callable[..., Any]) -> Callable[[Any, int], optax.GradientTransformationExtraArgs]:
  """``(learning_rate, num_steps) -> tx`` from a baseline architecture plugin (its theta is empty)."""
  return lambda lr, n: factory(learning_rate=lr).optimizer({}, num_steps=n)


def _adam_cosine(learning_rate: Any, num_steps: int) -> optax.GradientTransformationExtraArgs:
  # Peak learning rate at step 0, cosine decay to zero at ``num_steps`` (and zero after it).
  return optax.with_extra_args_support(optax.adam(optax.cosine_decay_schedule(learning_rate, max(1, num_steps))))


def _schedule_free_adamw(learning_rate: Any, num_steps: int) -> optax.GradientTransformationExtraArgs:
  # A short linear warm-up (5% of the run), as the schedule-free paper recommends; the step is tuned like Adam's.
  return contrib.schedule_free_adamw(learning_rate, warmup_steps=max(1, num_steps // 20))


def _schedule_free_eval(opt_state: optax.OptState, params: Any) -> Any:
  # Schedule-free methods take gradients at an interpolation point; the average ``x`` is what gets evaluated.
  return contrib.schedule_free_eval_params(opt_state, params)


def default_baselines(*, adam_learning_rates: Sequence[float] = ADAM_LEARNING_RATES,
                      sgd_learning_rates: Sequence[float] = SGD_LEARNING_RATES,
                      names: Sequence[str] | None = None) -> list[Baseline]:
  """Adam, Adam with cosine decay, RAdam, AdamW, SGD+momentum, schedule-free AdamW (each tuned over a grid),
  Prodigy and D-Adaptation AdamW.

  Args:
    adam_learning_rates: grid of Adam, Adam with cosine decay (its peak), RAdam, AdamW and schedule-free AdamW.
    sgd_learning_rates: grid of SGD with momentum 0.9.
    names: keep only these baselines (in this order); ``"adam"`` must be among them for the speed-up.

  Returns:
    The baselines.
  """
  adam_grid = tuple(float(x) for x in adam_learning_rates)
  everything = [
      Baseline("adam", _plugin(baselines.adam), adam_grid),
      Baseline("adam_cosine", _adam_cosine, adam_grid, scheduled=True),
      Baseline("radam", _plugin(baselines.radam), adam_grid),
      Baseline("adamw", _plugin(baselines.adamw), adam_grid),
      Baseline("sgd_momentum", _plugin(baselines.sgd_momentum), tuple(float(x) for x in sgd_learning_rates)),
      Baseline("prodigy", lambda _, n: contrib.prodigy()),
      Baseline("dadapt_adamw", lambda _, n: contrib.dadapt_adamw()),
      Baseline("schedule_free_adamw", _schedule_free_adamw, adam_grid, eval_params=_schedule_free_eval),
  ]
  if names is None:
    return everything
  by_name = {b.name: b for b in everything}
  unknown = [n for n in names if n not in by_name]
  if unknown:
    raise ValueError(f"Unknown baselines {unknown}; known: {', '.join(by_name)}.")
  return [by_name[n] for n in names]

