"""Meta-training: gradient estimators, truncation schedules, the shared truncated unroll and the outer loop.

The estimator plugin modules (``tbptt``, ``es``, ``pes``, ``combined``) are imported here explicitly, so what is
registered never depends on the configuration. Each module's factory has the module's name
(``lopt.meta_trainers.es.es``).
"""

from lopt.meta_trainers import antithetic, combined, es, objectives, pes, tbptt, truncation, unroll
from lopt.meta_trainers.base import GradientEstimator

__all__ = ["GradientEstimator", "antithetic", "combined", "es", "objectives", "pes", "tbptt", "truncation",
           "unroll"]
