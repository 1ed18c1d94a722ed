"""Detectors on gradients and updates: outliers, spikes, update ratio, the AdamW eps floor."""

from __future__ import annotations

import math
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


LEVEL_EVERY = 8  # trusted steps between recomputations of grad_spike's robust level


@dataclass
class GradSpike(Detector):
    """A gradient spike below the outlier level, on any of four readings:
    - the global norm's log-ratio to its typical value, log(||g|| / typical), above `z` robust
      standard deviations (MAD) of that log-ratio over the last `window` trusted steps, and at
      least `min_factor` x (the run's own noise sets the level: ~3x on a quiet MLP, more on a
      noisy LM; after `min_values` trusted steps, before that `factor`);
    - the global norm above `factor` x its typical value, whatever the noise;
    - every tensor's gradient norm at least `coherent` x its own typical value at once
      (`grad_norm_ratio_min`: a gradient scaled as a whole, which a hard batch does not do);
    - one tensor's mean(g^2) / mean(v) above `ratio` (SPAM's ratio taken per tensor).
    Outliers are reported by grad_outlier instead. The level is also the step numbers' trust level
    (`suspect_level`, refreshed at every read-back): a step above it does not enter the typical norms.

    Severity by effect: a spike on a converged model (loss at most `converged` x the loss of the
    first steps) whose gradient norm and update-to-weight ratio are no larger than those the run
    trained through early on (their medians over its first trusted steps after warm-up) is
    information, not a warning: it moved the weights less than an ordinary early step did. When the
    update is not yet known (the policy acts on grad_spike before the step), it stays a warning.
    Calibrated with detect-bench."""

    kind: ClassVar[str] = "grad_spike"
    every_step: ClassVar[bool] = True
    warmup: int = 20
    coherent: float = 7.0
    factor: float = 12.0
    ratio: float = 1000.0
    z: float = 10.0
    min_factor: float = 3.0
    window: int = 256
    min_values: int = 32
    converged: float = 0.01

    def __post_init__(self):
        super().__post_init__()
        self._log_ratios = _Window(self.window)
        self._start_losses: list[float] = []
        self._early_norms: list[float] = []
        self._early_updates: list[float] = []
        self._added, self._level_at, self._level = 0, 0, None  # the cached robust level (suspect_level)

    def suspect_level(self) -> float:
        """The log-ratio log(||g|| / typical) above which a step is a spike (and not trusted). The
        median and MAD of the window are recomputed every LEVEL_EVERY trusted steps (two sorts of up
        to 256 values cost ~40 us; a window of 256 barely moves in 8 values)."""
        ceiling = math.log(self.factor)
        if len(self._log_ratios) < self.min_values:
            return ceiling
        if self._level is None or self._added - self._level_at >= LEVEL_EVERY:
            median, sigma = self._log_ratios.median_mad()  # robust z of the log-ratio
            self._level = median + self.z * max(sigma, 1e-3)
            self._level_at = self._added
        return min(ceiling, max(math.log(max(self.min_factor, 1.0)), self._level))

    def _learn(self, row, log_ratio) -> None:
        if row.get("trusted", 1) and log_ratio is not None:
            self._log_ratios.add(log_ratio)
            self._added += 1
        loss, norm, update = row.get("loss"), row.get("grad_norm"), row.get("update_ratio_max")
        if _finite(loss) and len(self._start_losses) < self.min_values:
            self._start_losses.append(loss)
        if _finite(norm) and len(self._early_norms) < self.min_values:
            self._early_norms.append(norm)
        if _finite(update) and len(self._early_updates) < self.min_values:
            self._early_updates.append(update)

    def observe_only(self, step, row):
        loss = row.get("loss")
        if _finite(loss) and len(self._start_losses) < self.min_values:
            self._start_losses.append(loss)

    def detect(self, step, row):
        if row.get("outlier") or row.get("nonfinite"):
            return []
        norm, typical = row.get("grad_norm"), row.get("grad_norm_typical")
        known = _finite(norm) and _finite(typical) and typical > 0 and norm > 0
        global_ratio = norm / typical if known else 0.0
        log_ratio = math.log(global_ratio) if known else None
        coherent = row.get("grad_norm_ratio_min")
        coherent = coherent if _finite(coherent) else 0.0
        value = row.get("spike_ratio_max")
        tensor_spike = _finite(value) and value > self.ratio
        level = self.suspect_level()
        spike = (log_ratio is not None and log_ratio > level) or coherent > self.coherent or tensor_spike
        update = row.get("update_ratio_max")
        if not spike:
            self._learn(row, log_ratio)
            return []
        where = row.get("spike_param")
        effect = self._effect(row, norm, update)
        severity = "info" if effect else "warning"
        tail = (f" It moved nothing: {effect}; information, not a warning." if effect else
                " Likely fix: clip or skip the step (policy grad_spike: clip or skip), or reset the "
                "optimizer moments (SPAM).")
        tensors = (f"; largest per-tensor mean(g^2)/mean(v) {value:.4g} (in {where})" if _finite(value) else "")
        return [self.event(
            step, severity,
            f"gradient spike: global norm {norm:.4g} = {global_ratio:.3g}x its typical value (spike level "
            f"{math.exp(level):.3g}x), every tensor's at least {coherent:.3g}x its own{tensors}.{tail}",
            ratio=global_ratio, coherent_ratio=coherent, spike_ratio=value, threshold=math.exp(level),
            parameter=where, grad_norm=norm, update_ratio=update)]

    def _effect(self, row, norm, update) -> str:
        """Why a spike is harmless (the empty string when it may not be)."""
        loss = row.get("loss")
        if not (_finite(loss) and _finite(update) and _finite(norm) and len(self._start_losses) >= 4
                and len(self._early_norms) >= 4 and len(self._early_updates) >= 4):
            return ""
        start, early = _median(self._start_losses), _median(self._early_norms)
        early_update = _median(self._early_updates)
        if loss <= self.converged * start and norm <= early and update <= early_update:
            return (f"loss {loss:.3g} is {loss / start:.2g}x the first steps' {start:.3g}; the norm and the "
                    f"update-to-weight ratio {update:.3g} are within the {early:.3g} and {early_update:.3g} of "
                    "the run's early steps")
        return ""


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
        median = self._window.median()
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
