"""The headline of an evaluation report: per protocol, on which tasks the learned optimizer beats Adam.

"Beats" means a lower final training loss at equal steps: the learned optimizer's smoothed, seed-averaged training
loss after its ``num_steps`` is strictly below the baseline's after the same number of steps (the criterion of
``report._comparison`` and of the baselines' tuning, ``speedup.best_final``). A diverged learned run beats nothing;
a diverged baseline is beaten by any finite loss. The speed-up geometric mean is ``speedup.summarize``'s over tuned
Adam (lower bounds enter at their bound).

Protocols: ``hparam_free`` scores the learned optimizer as shipped (``report["learned"]``); ``tuned`` scores it with
its update multiplied by the per-task best of ``scoring.MULTIPLIERS`` (``report["learned_tuned"]``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

ADAM_FIXED_RATE = "0.001"  # the key of Adam's grid (``report["tasks"][t]["optimizers"]["adam"]["grid"]``) for 1e-3
PROTOCOLS = ("hparam_free", "tuned")
SPEEDUP_KEYS = {"hparam_free": "speedup", "tuned": "speedup_tuned"}


def _beats(mine: float | None, theirs: float | None) -> bool:
  return mine is not None and (theirs is None or mine < theirs)


def protocol_headline(report: Mapping[str, Any], learned: str, speedup_key: str) -> dict[str, Any]:
  """``{"num_tasks", "beats_adam_1e-3", "beats_tuned_adam", "speedup_geomean", "diverged"}`` for the optimizer
  named ``learned`` in ``report``; a list is None (a geomean absent) when the report lacks what it needs."""
  tasks = report["tasks"]
  out: dict[str, Any] = {"num_tasks": len(tasks)}
  finals = {t: task["optimizers"][learned]["final_train_loss"] for t, task in tasks.items()}
  has_adam = all("adam" in task["optimizers"] for task in tasks.values())
  has_fixed = has_adam and all(ADAM_FIXED_RATE in task["optimizers"]["adam"].get("grid", {})
                               for task in tasks.values())
  out["beats_adam_1e-3"] = ([t for t, task in tasks.items()
                             if _beats(finals[t], task["optimizers"]["adam"]["grid"][ADAM_FIXED_RATE])]
                            if has_fixed else None)
  out["beats_tuned_adam"] = ([t for t, task in tasks.items()
                              if _beats(finals[t], task["optimizers"]["adam"]["final_train_loss"])]
                             if has_adam else None)
  values = [task[speedup_key]["value"] for task in tasks.values() if speedup_key in task]
  if values and len(values) == len(tasks):
    # As speedup.summarize: a speed-up of 0 (diverged, or no progress) enters as 1e-3.
    out["speedup_geomean"] = float(math.exp(np.mean(np.log(np.maximum(np.asarray(values, np.float64), 1e-3)))))
  out["diverged"] = [t for t, v in finals.items() if v is None]
  return out


def headline(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """``{protocol: protocol_headline}`` for every protocol the report holds (see the module docstring)."""
  out = {}
  if report.get("learned"):
    out["hparam_free"] = protocol_headline(report, report["learned"], SPEEDUP_KEYS["hparam_free"])
  if report.get("learned_tuned"):
    out["tuned"] = protocol_headline(report, report["learned_tuned"], SPEEDUP_KEYS["tuned"])
  return out


def format_headline(headlines: Mapping[str, Mapping[str, Any]]) -> str:
  """One line per protocol: counts out of the tasks, the speed-up geomean and the diverged tasks."""
  lines = []
  for protocol, s in headlines.items():
    n = s["num_tasks"]
    count = lambda k, s=s, n=n: "-" if s.get(k) is None else f"{len(s[k])}/{n}"
    geomean = f"{s['speedup_geomean']:.2f}x" if "speedup_geomean" in s else "-"
    diverged = f" ({', '.join(s['diverged'])})" if s["diverged"] else ""
    lines.append(f"{protocol}: beats Adam(1e-3) on {count('beats_adam_1e-3')}, beats tuned Adam on "
                 f"{count('beats_tuned_adam')}, speed-up geomean {geomean}, diverged on {count('diverged')}{diverged}")
  return "\n".join(lines)
