"""The hand-designed optimizers a learned optimizer is evaluated against, all from optax.

Tuned baselines (Adam, RAdam, AdamW, SGD with momentum) wrap the ``lopt.architectures.baselines`` plugins and carry
a learning-rate grid; ``training.train_stacked`` trains every baseline at every grid value in one compile, and the
tuned value per task is chosen afterwards (``speedup.best_final``). Of ``optax.contrib``, the learning-rate-free Prodigy
and D-Adaptation AdamW run at their defaults; schedule-free AdamW (free of a schedule, not of a step size) is tuned
over Adam's grid and evaluated at its averaged iterate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import optax
from optax import contrib

from lopt.architectures import baselines
from lopt.evaluation.training import EvalParams

# Half-decade grids, wide enough that the best value is inside the grid on every task of the default suites.
ADAM_LEARNING_RATES: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
SGD_LEARNING_RATES: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


@dataclasses.dataclass(frozen=True)
class Baseline:
  """A baseline optimizer.

  Attributes:
    name: display name.
    make: ``(learning_rate, num_steps) -> optax transformation``; the learning rate is a traced scalar (or None
      for optimizers without a grid) and ``update`` accepts ``loss=``.
    learning_rates: the grid to tune over; empty for hyperparameter-free optimizers.
    eval_params: ``(opt_state, params) -> params`` to evaluate, when not the iterate itself.
  """

  name: str
  make: Callable[[Any, int], optax.GradientTransformationExtraArgs]
  learning_rates: tuple[float, ...] = ()
  eval_params: EvalParams | None = None

  @property
  def tuned(self) -> bool:
    return bool(self.learning_rates)


def _plugin(factory: Callable[..., Any]) -> Callable[[Any, int], optax.GradientTransformationExtraArgs]:
  """``(learning_rate, num_steps) -> tx`` from a baseline architecture plugin (its theta is empty)."""
  return lambda lr, n: factory(learning_rate=lr).optimizer({}, num_steps=n)


def _schedule_free_adamw(learning_rate: Any, num_steps: int) -> optax.GradientTransformationExtraArgs:
  # A short linear warm-up (5% of the run), as the schedule-free paper recommends; the step is tuned like Adam's.
  return contrib.schedule_free_adamw(learning_rate, warmup_steps=max(1, num_steps // 20))


def _schedule_free_eval(opt_state: optax.OptState, params: Any) -> Any:
  # Schedule-free methods take gradients at an interpolation point; the average ``x`` is what gets evaluated.
  return contrib.schedule_free_eval_params(opt_state, params)


def default_baselines(*, adam_learning_rates: Sequence[float] = ADAM_LEARNING_RATES,
                      sgd_learning_rates: Sequence[float] = SGD_LEARNING_RATES,
                      names: Sequence[str] | None = None) -> list[Baseline]:
  """Adam, RAdam, AdamW, SGD+momentum, schedule-free AdamW (each tuned over a grid), Prodigy, D-Adaptation AdamW.

  Args:
    adam_learning_rates: grid of Adam, RAdam, AdamW and schedule-free AdamW.
    sgd_learning_rates: grid of SGD with momentum 0.9.
    names: keep only these baselines (in this order); ``"adam"`` must be among them for the speed-up.

  Returns:
    The baselines.
  """
  adam_grid = tuple(float(x) for x in adam_learning_rates)
  everything = [
      Baseline("adam", _plugin(baselines.adam), adam_grid),
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

