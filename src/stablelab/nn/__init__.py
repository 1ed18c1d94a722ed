"""Model and loss building blocks: StableMax and the one small MLP."""

from stablelab.nn.mlp import MLP

from stablelab.nn.stablemax import (
    StableMax, log_stable_max, stable_max, stable_max_cross_entropy, stable_max_s,
)

__all__ = ["MLP", "StableMax", "log_stable_max", "stable_max", "stable_max_cross_entropy", "stable_max_s"]
