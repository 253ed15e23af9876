"""lopt: a JAX research framework for learned optimizers.

Importing ``lopt`` registers every built-in plugin (task families and samplers, architectures, estimators,
evaluation suites) and exposes the public API (docs/api.md):

    import lopt
    lopt.registry.names("architecture")          # every registered architecture
    arch = lopt.registry.lookup("architecture", "ff")()
    result = lopt.meta_train(task_sampler=..., architecture=arch, estimator=lopt.meta_trainers.pes.pes(), ...)
    trained = lopt.load_trained("/tmp/lopt_quickstart")   # a meta_train workdir's optimizer
    tx = trained.optimizer(num_steps=1000)                 # an optax transformation
    tx = lopt.pretrained.optimizer("celo2_v1", num_steps=1000)  # a shipped meta-trained optimizer (docs/pretrained.md)
"""

from lopt import architectures, evaluation, meta_trainers, pretrained, registry, runs, tasks
from lopt import config  # noqa: F401  registers meta_train and the evaluation hooks with gin
from lopt.architectures import LearnedOptimizer
from lopt.meta_trainers import GradientEstimator, MetaTrainResult, meta_train
from lopt.registry import KINDS
from lopt.runs.trained import TrainedOptimizer
from lopt.runs.trained import load as load_trained
from lopt.tasks import Task, TaskFamily, TaskSampler

__version__ = "0.2.0"


__all__ = ["GradientEstimator", "KINDS", "LearnedOptimizer", "MetaTrainResult", "Task", "TaskFamily", "TaskSampler",
           "TrainedOptimizer", "__version__", "architectures", "config", "evaluation", "load_trained",
           "meta_train", "meta_trainers", "pretrained", "registry", "runs", "tasks"]
