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


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


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
    gradient is non-finite. With `grad_scaler` (Monitor(grad_scaler=scaler)), a finite loss with
    non-finite gradients is float16 overflow that GradScaler answers itself (it skips the step and
    lowers its scale): an info event, not a warning."""

    kind: ClassVar[str] = "nonfinite"
    every_step: ClassVar[bool] = True
    grad_scaler: bool = False

    def detect(self, step, row):
        if not row.get("nonfinite"):
            return []
        where = row.get("nonfinite_param")
        loss = row.get("loss")
        if self.grad_scaler and _finite(loss):
            return [self.event(step, "info", f"float16 gradient overflow (loss {loss:.4g} finite, "
                               f"first non-finite gradient in {where}): GradScaler skips this step and "
                               "lowers its scale; expected now and then under AMP.",
                               loss=loss, parameter=where, amp_overflow=True)]
        first = f"; first parameter with a non-finite gradient: {where}" if where else ""
        return [self.event(
            step, "critical",
            f"non-finite loss or gradient (loss={loss}, grad_norm={row.get('grad_norm')}){first}. "
            "Likely fix: skip the batch (default policy), check the data for NaN/inf, lower the "
            "learning rate, or train in float32/bfloat16 instead of float16.",
            loss=loss, grad_norm=row.get("grad_norm"), parameter=where)]


def _median(values) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


class _Window:
    """The last `size` finite values, with robust statistics."""

    def __init__(self, size: int):
        self.values: deque[float] = deque(maxlen=size)

    def add(self, x: float) -> None:
        if _finite(x):
            self.values.append(x)

    def __len__(self) -> int:
        return len(self.values)

    def median_mad(self) -> tuple[float, float]:
        """(median, 1.4826 x median absolute deviation): a standard deviation estimate that one
        outlier cannot move (Hampel's scale; 1.4826 makes it consistent for a normal)."""
        median = _median(self.values)
        return median, 1.4826 * _median(abs(v - median) for v in self.values)


@dataclass
class LossSpike(Detector):
    """A loss far above its recent level, judged on a robust scale of log-loss and against a floor
    relative to the loss at the start, so that one hard batch near zero loss is not an instability.

    Fires when log(loss) - median > z * MAD-sigma of the last `window` log-losses, and the excess
    loss - exp(median) is at least `floor` x the loss of the first steps (the median of the first
    `min_values` losses). Flagged values do not enter the window. Calibrated with `stablelab
    detect-bench` (docs/monitor.md). Anchors: OLMo-core mean + 6 sigma over 128 steps; Megatron 10x
    the largest loss; llm-foundry 2x the 100-step mean for 5 steps."""

    kind: ClassVar[str] = "loss_spike"
    every_step: ClassVar[bool] = True
    window: int = 32
    min_values: int = 32
    z: float = 6.0
    floor: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        self._window = _Window(self.window)
        self._start: list[float] = []

    def _take(self, loss) -> None:
        if _finite(loss) and loss > 0:
            self._window.add(math.log(loss))
            if len(self._start) < self.min_values:
                self._start.append(loss)

    def observe_only(self, step, row):
        self._take(row.get("loss"))

    def detect(self, step, row):
        loss = row.get("loss")
        if not _finite(loss) or loss <= 0:
            return []
        if len(self._window) < self.min_values:
            self._take(loss)
            return []
        median, sigma = self._window.median_mad()
        start = _median(self._start)
        level = math.exp(median)
        excess = loss - level
        robust_z = (math.log(loss) - median) / max(sigma, 1e-3)
        if robust_z > self.z and excess >= self.floor * start:
            return [self.event(
                step, "warning",
                f"loss {loss:.4g} spiked above its recent level {level:.4g} (robust z {robust_z:.1f} > "
                f"{self.z:g}; excess {excess:.3g} >= {self.floor:g} x the starting loss {start:.3g}). "
                "Likely fix: skip the batch and check the data around this step; if it follows a "
                "gradient spike, clip or skip that step.",
                loss=loss, level=level, excess=excess, z=robust_z, start_loss=start)]
        self._take(loss)
        return []


@dataclass
class LossRise(Detector):
    """A sustained rise of the loss: the median of the last `window` losses above (1 + rise) x the
    lowest such median seen, by at least `floor` x the loss at the start. Early warning of a
    divergence that builds over many steps (a runaway learning rate), before the loss doubles."""

    kind: ClassVar[str] = "loss_rise"
    every_step: ClassVar[bool] = True
    window: int = 32
    rise: float = 0.3
    floor: float = 0.1
    cooldown: int = 100

    def __post_init__(self):
        super().__post_init__()
        self._recent = _Window(self.window)
        self._start: list[float] = []
        self._lowest: float | None = None

    def observe_only(self, step, row):
        self._take(row.get("loss"))

    def _take(self, loss) -> float | None:
        if not _finite(loss):
            return None
        self._recent.add(loss)
        if len(self._start) < self.window:
            self._start.append(loss)
        if len(self._recent) < self.window:
            return None
        median = _median(self._recent.values)
        self._lowest = median if self._lowest is None else min(self._lowest, median)
        return median

    def detect(self, step, row):
        median = self._take(row.get("loss"))
        if median is None or self._lowest is None:
            return []
        start = _median(self._start)
        excess = median - self._lowest
        if median > (1 + self.rise) * self._lowest and excess >= self.floor * start:
            return [self.event(
                step, "warning",
                f"loss rising: median of the last {self.window} steps {median:.4g} is "
                f"{median / self._lowest:.2f}x its lowest {self._lowest:.4g}. Likely fix: lower the "
                "learning rate (policy loss_rise: lr_backoff); check the schedule.",
                value=median, lowest=self._lowest, ratio=median / self._lowest)]
        return []


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
    cls.kind: cls for cls in (NonFinite, GradOutlier, GradSpike, LossSpike, LossRise, UpdateRatio,
                              AttnLogitGrowth, LogitDivergence, SoftmaxCollapse, EpsFloor, EdgeOfStability)
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
        if setting is True:
            setting = {}
        if not isinstance(setting, dict):
            raise UsageError(f"settings for detector {kind!r} must be a dict or False, got {setting!r}")
        defaults = {f.name: f.default for f in fields(cls)}
        for name, value in setting.items():
            default = defaults.get(name)
            if not _number(default):
                continue
            if not _number(value):
                raise UsageError(f"detector {kind!r} setting {name!r} must be a number, got {value!r}")
            if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
                raise UsageError(f"detector {kind!r} setting {name!r} must be a whole number, got {value!r}")
            if value < 0:
                raise UsageError(f"detector {kind!r} setting {name!r} must be >= 0, got {value!r}")
        try:
            built.append(cls(**(setting or {})))
        except TypeError as error:
            raise UsageError(f"bad settings for detector {kind!r}: {error}") from None
    return built


def default_settings() -> dict[str, dict[str, Any]]:
    """Every detector's default thresholds (for docs and the report)."""
    return {kind: cls().settings() for kind, cls in DETECTORS.items()}
