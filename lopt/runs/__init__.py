"""Everything about a run directory: running a gin config in it, evaluating it, loading its trained optimizer, sweeps.

The layout itself (which file is where) is ``lopt.workdir``; it sits below this package because ``meta_train``
writes into it too.

- ``training``: ``meta_train_in_workdir`` (what ``experiments/meta_train.py`` and sweeps run) and ``launch``.
- ``evaluate``: ``evaluate_workdir`` (what ``experiments/evaluate.py`` runs).
- ``trained``: ``load`` a workdir's trained optimizer.
- ``meta_optimizer``: ``learned_meta_optimizer``, a workdir's trained optimizer as the outer optimizer.
- ``sweep``: a grid of configurations, each in its own workdir, with a summary.
- ``errors``: ``user_errors``, the one-line error reporting of the entry points.
"""

from lopt.runs import errors, evaluate, meta_optimizer, sweep, trained, training
from lopt.runs.errors import user_errors
from lopt.runs.evaluate import evaluate_workdir
from lopt.runs.meta_optimizer import learned_meta_optimizer
from lopt.runs.trained import TrainedOptimizer, load
from lopt.runs.training import launch, meta_train_in_workdir

__all__ = ["TrainedOptimizer", "errors", "evaluate", "evaluate_workdir", "launch", "learned_meta_optimizer", "load",
           "meta_optimizer", "meta_train_in_workdir", "sweep", "trained", "training", "user_errors"]
