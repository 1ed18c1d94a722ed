"""Numerically stable building blocks (StableMax, ...)."""

from stablelab.nn.stablemax import (
    StableMax, log_stable_max, stable_max, stable_max_cross_entropy, stable_max_s,
)

__all__ = ["StableMax", "log_stable_max", "stable_max", "stable_max_cross_entropy", "stable_max_s"]
