"""Detectors turn signals into events. One registry (`DETECTORS`), one class per kind.

Every detector reads one step's row of host values (`check(step, row)`), keeps whatever history it
needs, and returns the events it raises. Thresholds have documented defaults, a warm-up (steps or
values seen before it may fire) and are set by keyword: `Monitor(..., detectors={"loss_spike":
{"z": 8.0}, "eps_floor": False})`. Keys a detector needs that are missing from a row (a signal
that was not sampled at that step) make it return nothing for that row."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from stablelab.errors import UsageError
from stablelab.monitor.events import SEVERITIES, Event


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@dataclass
class Detector:
    """Base: `kind` names the event; `warmup` and `cooldown` are counted in steps."""

    kind: ClassVar[str] = ""
    # signals this detector reads every step (the guard can then act before the optimizer steps)
    every_step: ClassVar[bool] = False
    warmup: int = 0
    cooldown: int = 0

    def __post_init__(self):
        self._last_fired: int | None = None
        self._last_rank = -1

    def check(self, step: int, row: dict[str, Any]) -> list[Event]:
        if step < self.warmup:
            self.observe_only(step, row)
            return []
        events = self.detect(step, row)
        cooling = self._last_fired is not None and step - self._last_fired <= self.cooldown
        if cooling:  # quiet during cool-down, except an escalation (warning -> critical)
            events = [e for e in events if SEVERITIES.index(e.severity) > self._last_rank]
        if events:
            self._last_fired = step
            self._last_rank = max(SEVERITIES.index(e.severity) for e in events)
        return events

    def observe_only(self, step: int, row: dict[str, Any]) -> None:
        """Update history during warm-up or cool-down without firing."""

    def detect(self, step: int, row: dict[str, Any]) -> list[Event]:  # pragma: no cover - abstract
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def event(self, step: int, severity: str, message: str, **data: Any) -> Event:
        return Event(self.kind, step, severity, message, data)


@dataclass
class NonFinite(Detector):
    """Loss or any gradient is NaN or infinite. Names the first parameter (in model order) whose
    gradient is non-finite."""

    kind: ClassVar[str] = "nonfinite"
    every_step: ClassVar[bool] = True

    def detect(self, step, row):
        if not row.get("nonfinite"):
            return []
        where = row.get("nonfinite_param")
        loss = row.get("loss")
        first = f"; first parameter with a non-finite gradient: {where}" if where else ""
        return [self.event(
            step, "critical",
            f"non-finite loss or gradient (loss={loss}, grad_norm={row.get('grad_norm')}){first}. "
            "Likely fix: skip the batch (default policy), check the data for NaN/inf, lower the "
            "learning rate, or train in float32/bfloat16 instead of float16.",
            loss=loss, grad_norm=row.get("grad_norm"), parameter=where)]


class _Window:
    """Running mean and standard deviation of the last `size` finite values."""

    def __init__(self, size: int):
        self.values: deque[float] = deque(maxlen=size)

    def add(self, x: float) -> None:
        if _finite(x):
            self.values.append(x)

    def stats(self) -> tuple[float, float]:
        n = len(self.values)
        mean = sum(self.values) / n
        var = sum((v - mean) ** 2 for v in self.values) / max(n - 1, 1)
        return mean, math.sqrt(var)


@dataclass
class LossSpike(Detector):
    """Loss above mean + z * std of the last `window` losses and above `min_ratio` x the mean.

    Baseline: OLMo-core skips a step when loss > mean + 6 sigma of the last 128 values, active after
    64 values. Flagged values do not enter the window, so a run that keeps climbing keeps firing."""

    kind: ClassVar[str] = "loss_spike"
    every_step: ClassVar[bool] = True
    window: int = 128
    min_values: int = 64
    z: float = 6.0
    min_ratio: float = 1.1

    def __post_init__(self):
        super().__post_init__()
        self._window = _Window(self.window)

    def observe_only(self, step, row):
        self._window.add(row.get("loss"))

    def detect(self, step, row):
        loss = row.get("loss")
        if not _finite(loss):
            return []
        if len(self._window.values) < self.min_values:
            self._window.add(loss)
            return []
        mean, std = self._window.stats()
        threshold = max(mean + self.z * std, self.min_ratio * mean)
        if loss > threshold:
            return [self.event(
                step, "warning",
                f"loss {loss:.4g} above {threshold:.4g} (window mean {mean:.4g} + {self.z:g} sigma, "
                f"at least {self.min_ratio:g}x the mean). Likely fix: lower the learning rate or skip "
                "the batch; if it repeats, check the data around this step.",
                loss=loss, threshold=threshold, mean=mean, std=std)]
        self._window.add(loss)
        return []


@dataclass
class GradSpike(Detector):
    """A parameter's gradient far above its second moment: per tensor mean(g^2) / mean(v) > ratio.

    v is the optimizer's bias-corrected second moment (Adam family) or a running estimate (EMA 0.99
    of mean(g^2)) when it has none. SPAM flags elements with g^2 > 5000 v after 20 steps; over a
    whole tensor the ratio is averaged, so the default is 1000 (gradient RMS ~32x its usual level)."""

    kind: ClassVar[str] = "grad_spike"
    every_step: ClassVar[bool] = True
    warmup: int = 20
    ratio: float = 1000.0

    def detect(self, step, row):
        value = row.get("spike_ratio_max")
        if not _finite(value) or value <= self.ratio:
            return []
        where = row.get("spike_param")
        return [self.event(
            step, "warning",
            f"gradient spike: mean(g^2)/mean(v) = {value:.4g} > {self.ratio:g} in {where} "
            f"(global grad norm {row.get('grad_norm', float('nan')):.4g}). Likely fix: clip or skip "
            "the step (policy grad_spike: clip or skip), or reset the optimizer moments (SPAM).",
            ratio=value, threshold=self.ratio, parameter=where, grad_norm=row.get("grad_norm"))]


@dataclass
class UpdateRatio(Detector):
    """Update-to-weight ratio ||delta w|| / ||w|| of a weight matrix above `threshold`.

    Healthy Adam training sits near 1e-3 per step; 0.1 means the weights change by a tenth of their
    size in one step, which is what a learning rate 100x too high looks like from the first step."""

    kind: ClassVar[str] = "update_ratio"
    every_step: ClassVar[bool] = False
    threshold: float = 0.1
    cooldown: int = 50

    def detect(self, step, row):
        value = row.get("update_ratio_max")
        if not _finite(value) or value <= self.threshold:
            return []
        where = row.get("update_param")
        return [self.event(
            step, "warning",
            f"update-to-weight ratio {value:.4g} > {self.threshold:g} in {where} (lr {row.get('lr')}). "
            "Likely fix: lower the learning rate (policy update_ratio: lr_backoff), lengthen warm-up.",
            ratio=value, threshold=self.threshold, parameter=where, lr=row.get("lr"))]


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
    """Fraction of samples whose softmax collapsed in floating point above `threshold`
    (Prieto et al. 2025: loss and the correct-class gradient become exactly 0)."""

    kind: ClassVar[str] = "softmax_collapse"
    threshold: float = 0.01
    cooldown: int = 100

    def detect(self, step, row):
        value = row.get("softmax_collapse_fraction")
        if not _finite(value) or value <= self.threshold:
            return []
        return [self.event(step, "warning",
                           f"softmax collapse in {value:.2%} of samples (> {self.threshold:.2%}). Likely "
                           "fix: StableMax or float64 softmax, orthogonal gradient (perpGrad).",
                           value=value, threshold=self.threshold)]


@dataclass
class EpsFloor(Detector):
    """Gradient RMS of a weight matrix below `factor` x AdamW's eps: the update m / (sqrt(v) + eps)
    shrinks (Wortsman et al. 2023 section 3.4). Tensors whose gradient is exactly 0 are ignored."""

    kind: ClassVar[str] = "eps_floor"
    factor: float = 10.0
    cooldown: int = 100

    def detect(self, step, row):
        value = row.get("eps_ratio_min")
        if not _finite(value) or value >= self.factor:
            return []
        where = row.get("eps_param")
        return [self.event(step, "warning",
                           f"gradient RMS of {where} is {value:.3g} x eps (< {self.factor:g} x eps): "
                           "AdamW's update is damped. Likely fix: lower eps (e.g. 1e-15), or rescale the loss.",
                           ratio=value, threshold=self.factor, parameter=where)]


@dataclass
class EdgeOfStability(Detector):
    """Scheduled sharpness check (stablelab.signals.curvature.sharpness_check): fires when the
    sharpness reaches `factor` x its stability threshold: lambda_max against 2/lr for gradient
    descent (Cohen et al. 2021), the preconditioned lambda_max against (2 + 2 beta1) / ((1 - beta1) lr)
    = 38/lr under Adam (Cohen et al. 2022). Default 0.9, the curvature signal's own edge margin."""

    kind: ClassVar[str] = "edge_of_stability"
    factor: float = 0.9

    def detect(self, step, row):
        if _finite(row.get("sharpness_adam_ratio")):
            ratio, what = row["sharpness_adam_ratio"], "preconditioned sharpness / (38/lr at beta1 0.9)"
            lam, threshold = row.get("sharpness_preconditioned_lambda_max"), row.get("sharpness_adam_threshold")
        else:
            lam, threshold = row.get("sharpness_lambda_max"), row.get("sharpness_gd_threshold")
            if not (_finite(lam) and _finite(threshold)) or threshold <= 0:
                return []
            ratio, what = lam / threshold, "lambda_max / (2/lr)"
        if ratio < self.factor:
            return []
        return [self.event(step, "warning",
                           f"{what} = {ratio:.3g} >= {self.factor:g} (lambda {lam:.4g}, threshold "
                           f"{threshold:.4g}): training is at the edge of stability. Likely fix: lower the "
                           "learning rate if the loss oscillates; otherwise expected (Cohen et al.).",
                           ratio=ratio, lambda_max=lam, threshold=threshold, trace=row.get("sharpness_trace"))]


DETECTORS: dict[str, type[Detector]] = {
    cls.kind: cls for cls in (NonFinite, LossSpike, GradSpike, AttnLogitGrowth, LogitDivergence,
                              SoftmaxCollapse, UpdateRatio, EpsFloor, EdgeOfStability)
}


def register_detector(cls: type[Detector]) -> type[Detector]:
    """Add a detector class (usable as a decorator); its `kind` becomes a valid policy key."""
    DETECTORS[cls.kind] = cls
    return cls


def build_detectors(overrides: dict[str, Any] | None = None) -> list[Detector]:
    """All registered detectors with their defaults; `overrides[kind]` is a dict of settings, or
    False to switch that detector off."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(DETECTORS)
    if unknown:
        raise UsageError(f"unknown detector(s) {sorted(unknown)}; available: {sorted(DETECTORS)}")
    built = []
    for kind, cls in DETECTORS.items():
        setting = overrides.get(kind, {})
        if setting is False:
            continue
        try:
            built.append(cls(**(setting or {})))
        except TypeError as error:
            raise UsageError(f"bad settings for detector {kind!r}: {error}") from None
    return built


def default_settings() -> dict[str, dict[str, Any]]:
    """Every detector's default thresholds (for docs and the report)."""
    return {kind: cls().settings() for kind, cls in DETECTORS.items()}
