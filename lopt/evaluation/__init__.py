"""Scoring optimizers: train tasks with any optax optimizer, tuned baselines, suites, the speed-up metric, reports
and the two ``meta_train`` hooks.

- ``training``: the one program shape every evaluation runs (tasks of a family vmapped, a ``lax.scan`` over steps,
  test losses along the way), for one optimizer, a hyperparameter grid or several optimizers at once.
- ``tuned_baselines``: the optax optimizers a learned optimizer is compared with, and their learning-rate grids.
- ``suites``: named lists of held-out tasks (registry kind ``eval_suite``).
- ``speedup``: VeLO's speed-up metric.
- ``scoring``: ``evaluate_suite``, a learned optimizer (two protocols) against the baselines on a suite -> a report.
- ``baseline_cache``: baseline results on disk, keyed by everything that determines them.
- ``headline``: per protocol, the tasks that beat Adam(1e-3) and tuned Adam, the speed-up geomean, divergences.
- ``model_card``: a shipped optimizer's card from its run and evaluations.
- ``report``, ``plots``: the report as JSON, markdown, figures and writer scalars.
- ``hooks``: ``heldout_comparison`` (end of meta-training) and ``periodic_meta_eval`` (during it).
"""

from lopt.evaluation import (baseline_cache, headline, hooks, model_card, report, scoring, speedup, suites, training,
                             tuned_baselines)
from lopt.evaluation.hooks import heldout_comparison, periodic_meta_eval
from lopt.evaluation.report import format_markdown, write_report
from lopt.evaluation.scoring import evaluate_suite
from lopt.evaluation.suites import get_suite
from lopt.evaluation.training import FAST_COMPILE, HELDOUT_SEED_OFFSET, train_grid, train_stacked, train_tasks
from lopt.evaluation.tuned_baselines import Baseline, default_baselines

__all__ = ["Baseline", "FAST_COMPILE", "HELDOUT_SEED_OFFSET", "baseline_cache", "default_baselines",
           "evaluate_suite", "format_markdown", "get_suite", "headline", "heldout_comparison", "hooks", "model_card",
           "periodic_meta_eval", "report", "scoring", "speedup", "suites", "train_grid", "train_stacked",
           "train_tasks", "training", "tuned_baselines", "write_report"]
