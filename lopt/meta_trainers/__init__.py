"""Meta-training: gradient estimators, truncation, the shared truncated unroll and the outer loop.

The estimator plugin modules (``tbptt``, ``es``, ``pes``, ``combined``) are imported here explicitly, so what is
registered never depends on the configuration. Each module's factory has the module's name
(``lopt.meta_trainers.es.es``) and returns a ``GradientEstimator`` value.
"""

from lopt.meta_trainers import (antithetic, combined, es, objectives, outer_loop, pes, sharding, tbptt, truncation,
                                unroll)
from lopt.meta_trainers.estimator import GradientEstimator
from lopt.meta_trainers.outer_loop import MetaTrainResult, default_meta_optimizer, meta_train

__all__ = ["GradientEstimator", "MetaTrainResult", "antithetic", "combined", "default_meta_optimizer", "es",
           "meta_train", "objectives", "outer_loop", "pes", "sharding", "tbptt", "truncation", "unroll"]
