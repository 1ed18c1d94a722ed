"""Detectors on gradients and updates: outliers, spikes, update ratio, the AdamW eps floor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from stablelab.monitor.detectors.base import Detector, _finite, _median, _Window


@dataclass
class GradOutlier(Detector):
    """The guard's skip rule, evaluated on the device every step (stablelab.monitor.measure): the
    global gradient norm above `outlier_factor` x its running typical value (EMA of log norm), or a
    step the measurement flagged. The default policy skips these steps."""

    kind: ClassVar[str] = "grad_outlier"
    every_step: ClassVar[bool] = True

    def detect(self, step, row):
        if not row.get("outlier"):
            return []
        norm, typical = row.get("grad_norm"), row.get("grad_norm_typical")
        ratio = norm / typical if _finite(norm) and _finite(typical) and typical > 0 else float("nan")
        return [self.event(
            step, "critical",
            f"extreme gradient outlier: global norm {norm:.4g} is {ratio:.3g}x its typical {typical:.4g}. "
            "The default policy skips this step. If outliers repeat, check the data and lower the "
            "learning rate.", grad_norm=norm, typical=typical, ratio=ratio)]


@dataclass
class GradSpike(Detector):
    """A gradient spike below the outlier level, on any of three readings: every tensor's gradient
    norm at least `coherent` x its own typical value at once (`grad_norm_ratio_min`: a gradient
    scaled as a whole, which a hard batch does not do), the global norm above `factor` x its
    typical value, or one tensor's mean(g^2) / mean(v) above `ratio` (SPAM's ratio taken per
    tensor). Outliers are reported by grad_outlier instead. Calibrated with detect-bench."""

    kind: ClassVar[str] = "grad_spike"
    every_step: ClassVar[bool] = True
    warmup: int = 20
    coherent: float = 7.0
    factor: float = 12.0
    ratio: float = 1000.0

    def detect(self, step, row):
        if row.get("outlier") or row.get("nonfinite"):
            return []
        norm, typical = row.get("grad_norm"), row.get("grad_norm_typical")
        global_ratio = norm / typical if _finite(norm) and _finite(typical) and typical > 0 else 0.0
        coherent = row.get("grad_norm_ratio_min")
        coherent = coherent if _finite(coherent) else 0.0
        value = row.get("spike_ratio_max")
        tensor_spike = _finite(value) and value > self.ratio
        if global_ratio <= self.factor and coherent <= self.coherent and not tensor_spike:
            return []
        where = row.get("spike_param")
        return [self.event(
            step, "warning",
            f"gradient spike: global norm {norm:.4g} = {global_ratio:.3g}x its typical value, every "
            f"tensor's at least {coherent:.3g}x its own; largest per-tensor mean(g^2)/mean(v) "
            f"{value:.4g} (in {where}). Likely fix: clip or skip the step (policy grad_spike: clip "
            "or skip), or reset the optimizer moments (SPAM).",
            ratio=global_ratio, coherent_ratio=coherent, spike_ratio=value, threshold=self.factor,
            parameter=where, grad_norm=norm)]


@dataclass
class UpdateRatio(Detector):
    """Update-to-weight ratio ||delta w|| / ||w|| of the weight matrices jumping above `factor` x
    its median over the last `window` steps (after `min_values` values), or above the absolute
    `threshold`. A learning rate 100x too high shows from its first step; a linear warm-up raises
    the ratio by at most ~2x over its median and does not fire."""

    kind: ClassVar[str] = "update_ratio"
    every_step: ClassVar[bool] = False
    factor: float = 5.0
    window: int = 200
    min_values: int = 20
    threshold: float = 1.0
    cooldown: int = 50

    def __post_init__(self):
        super().__post_init__()
        self._window = _Window(self.window)

    def observe_only(self, step, row):
        self._window.add(row.get("update_ratio_max"))

    def detect(self, step, row):
        value = row.get("update_ratio_max")
        if not _finite(value) or value <= 0:
            return []
        if len(self._window) < self.min_values:
            self._window.add(value)
            return [] if value <= self.threshold else self._fire(step, row, value, None)
        median = _median(self._window.values)
        if value > self.threshold or (median > 0 and value > self.factor * median):
            return self._fire(step, row, value, median)
        self._window.add(value)
        return []

    def _fire(self, step, row, value, median):
        where = row.get("update_param")
        against = f"{value / median:.3g}x its recent median {median:.3g}" if median else f"> {self.threshold:g}"
        return [self.event(
            step, "warning",
            f"update-to-weight ratio {value:.4g} ({against}) in {where} (lr {row.get('lr')}). "
            "Likely fix: lower the learning rate (policy update_ratio: lr_backoff), lengthen warm-up.",
            ratio=value, median=median, threshold=self.factor, parameter=where, lr=row.get("lr"))]


@dataclass
class EpsFloor(Detector):
    """Gradient RMS of a weight matrix below `factor` x AdamW's eps: the update m / (sqrt(v) + eps)
    shrinks (Wortsman et al. 2023 section 3.4). Tensors whose gradient is exactly 0 are ignored.
    Severity info: a converged model's gradients shrink too; this explains slow progress, it does
    not predict a failure."""

    kind: ClassVar[str] = "eps_floor"
    factor: float = 10.0
    cooldown: int = 100

    def detect(self, step, row):
        value = row.get("eps_ratio_min")
        if not _finite(value) or value >= self.factor:
            return []
        where = row.get("eps_param")
        return [self.event(step, "info",
                           f"gradient RMS of {where} is {value:.3g} x eps (< {self.factor:g} x eps): "
                           "AdamW's update is damped. Likely fix: lower eps (e.g. 1e-15), or rescale the loss.",
                           ratio=value, threshold=self.factor, parameter=where)]
