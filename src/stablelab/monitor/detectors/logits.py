"""Detectors on logits: attention logit growth, output logit divergence, softmax collapse."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

from stablelab.monitor.detectors.base import Detector, _finite


@dataclass
class AttnLogitGrowth(Detector):
    """Max attention logit per layer: absolute level, and a log-linear trend that predicts when it
    will cross `critical` (1e4: Wortsman et al. 2023 found runs past ~1e4 diverge).

    Fires `critical` at or above `critical`, `warning` at or above `level`, and `warning` when the
    least-squares slope of log10(max logit) over the last `trend_points` samples (all at or above
    `trend_min_level`) predicts the crossing within `horizon` steps."""

    kind: ClassVar[str] = "attn_logit_growth"
    level: float = 1e3
    critical: float = 1e4
    trend_points: int = 6
    trend_min_level: float = 100.0
    horizon: int = 1000
    cooldown: int = 100

    def __post_init__(self):
        super().__post_init__()
        self._history: deque[tuple[int, float]] = deque(maxlen=self.trend_points)

    def observe_only(self, step, row):
        value = row.get("attn_logit_max")
        if _finite(value) and value > 0:
            self._history.append((step, math.log10(value)))

    def detect(self, step, row):
        value = row.get("attn_logit_max")
        if not _finite(value) or value <= 0:
            return []
        self.observe_only(step, row)
        layer = row.get("attn_logit_layer")
        fix = "Likely fix: per-head qk-layernorm (removes logit growth), or a lower learning rate."
        if value >= self.critical:
            return [self.event(step, "critical",
                               f"max attention logit {value:.4g} >= {self.critical:g} (layer {layer}); "
                               f"runs past ~1e4 diverged in Wortsman et al. 2023. {fix}",
                               value=value, threshold=self.critical, layer=layer)]
        if value >= self.level:
            return [self.event(step, "warning",
                               f"max attention logit {value:.4g} >= {self.level:g} (layer {layer}). {fix}",
                               value=value, threshold=self.level, layer=layer)]
        crossing = self.predicted_crossing()
        if crossing is not None and crossing - step <= self.horizon:
            return [self.event(step, "warning",
                               f"max attention logit {value:.4g} (layer {layer}) grows log-linearly and "
                               f"is predicted to cross {self.critical:g} at step ~{crossing}. {fix}",
                               value=value, predicted_step=crossing, threshold=self.critical, layer=layer)]
        return []

    def predicted_crossing(self) -> int | None:
        """Step at which the least-squares line through (step, log10 value) reaches log10(critical)."""
        points = list(self._history)
        if len(points) < self.trend_points or min(p[1] for p in points) < math.log10(self.trend_min_level):
            return None
        n = len(points)
        mx = sum(p[0] for p in points) / n
        my = sum(p[1] for p in points) / n
        sxx = sum((p[0] - mx) ** 2 for p in points)
        if sxx == 0:
            return None
        slope = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx  # least squares
        if slope <= 0:
            return None
        last_step, last_log = points[-1]
        return int(round(last_step + (math.log10(self.critical) - last_log) / slope))


@dataclass
class LogitDivergence(Detector):
    """Output log Z (logsumexp of the logits) drifted far from 0: |mean log Z| > threshold.

    Wortsman et al. 2023 section 3.2: without weight decay log Z drifts late in training and the
    loss diverges; z-loss 1e-4 * (log Z)^2 keeps it near 0. At initialisation log Z ~ log(vocab)."""

    kind: ClassVar[str] = "logit_divergence"
    threshold: float = 30.0
    cooldown: int = 100

    def detect(self, step, row):
        value = row.get("log_z_mean")
        if not _finite(value) or abs(value) <= self.threshold:
            return []
        return [self.event(step, "warning",
                           f"output log Z mean {value:.4g} (max |log Z| {row.get('log_z_max')}) beyond "
                           f"+-{self.threshold:g}. Likely fix: z-loss 1e-4 * (log Z)^2, or weight decay.",
                           value=value, threshold=self.threshold)]


@dataclass
class SoftmaxCollapse(Detector):
    """Softmax collapse (Prieto et al. 2025: the softmax sums to exactly 1 in floating point, so the
    loss and the correct-class gradient are exactly 0), measured in the dtype the loss is computed in.

    `warning` when more than `threshold` of the samples collapse although their float32 non-top
    probability mass is material (training signal lost to precision, as in bfloat16 losses);
    `info` when samples collapse only because they are confidently classified (in float32 that
    mass is below 2^-24: information, not an instability)."""

    kind: ClassVar[str] = "softmax_collapse"
    threshold: float = 0.01
    cooldown: int = 100

    def detect(self, step, row):
        lost, value = row.get("softmax_collapse_lost_fraction"), row.get("softmax_collapse_fraction")
        if _finite(lost) and lost > self.threshold:
            return [self.event(step, "warning",
                               f"softmax collapse with material probability lost in {lost:.2%} of samples "
                               f"(> {self.threshold:.2%}): the loss's precision rounds their gradient "
                               "away. Likely fix: compute the loss in float32, StableMax, or "
                               "orthogonal gradient (perpGrad).", value=lost, collapsed=value,
                               threshold=self.threshold)]
        if _finite(value) and value > self.threshold:
            return [self.event(step, "info",
                               f"{value:.2%} of samples are confidently classified to exactly zero "
                               "loss (softmax collapse in float32 precision; no training signal from "
                               "them). Expected after 100% train accuracy.", value=value,
                               threshold=self.threshold)]
        return []
