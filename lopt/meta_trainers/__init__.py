"""Meta-training: gradient estimators, the shared truncated unroll and the outer loop."""

from lopt.meta_trainers import pes, unroll
from lopt.meta_trainers.base import GradientEstimator

__all__ = ["GradientEstimator", "pes", "unroll"]
