"""Learned optimizer architectures and hand-designed baselines.

Each module registers its plugins on import; factories are reached through ``lopt.registry.lookup("architecture",
name)`` or their modules (``lopt.architectures.ff.ff``).
"""

from lopt.architectures import baselines, celo2, features, ff, lstm_hyper, per_tensor
from lopt.architectures.base import LearnedOptimizer

__all__ = ["LearnedOptimizer", "baselines", "celo2", "features", "ff", "lstm_hyper", "per_tensor"]
