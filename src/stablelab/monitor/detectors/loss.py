"""Detectors on the loss: non-finite values, spikes, slow rises."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from stablelab.monitor.detectors.base import Detector, _finite, _median, _Window


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


def _start_level(detector, full: int) -> float:
    """The median of the detector's first losses (`_start`), computed once when all `full` are in."""
    if detector._start_median is not None:
        return detector._start_median
    level = _median(detector._start)
    if len(detector._start) >= full:
        detector._start_median = level
    return level


@dataclass
class LossSpike(Detector):
    """A loss far above its recent level, judged on a robust scale of log-loss and against a floor
    relative to the loss at the start, so that one hard batch near zero loss is not an instability.

    Fires when log(loss) - median > z * MAD-sigma of the last `window` log-losses, and the excess
    loss - exp(median) is at least `floor` x the loss of the first steps (the median of the first
    `min_values` losses). Flagged values do not enter the window. Calibrated with `stablelab
    detect-bench` (docs/monitor.md). Anchors: OLMo-core mean + 6 sigma over 128 steps; Megatron 10x
    the largest loss; llm-foundry 2x the 100-step mean for 5 steps.

    Before `min_values` losses are in, an early blow-up has no robust scale to be judged on: the
    loss is then compared with the first loss or the median of the losses so far, whichever is lower
    (from the first step on), and a loss above `early_factor` x that level is a warning on the step it happens (a high learning rate
    blowing up in its first steps would otherwise become the baseline)."""

    kind: ClassVar[str] = "loss_spike"
    every_step: ClassVar[bool] = True
    window: int = 32
    min_values: int = 32
    z: float = 6.0
    floor: float = 0.1
    early_factor: float = 2.0

    def __post_init__(self):
        super().__post_init__()
        self._window = _Window(self.window)
        self._start: list[float] = []
        self._start_median: float | None = None
        self._early_fired = False

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
            return self._early(step, loss)
        start = _start_level(self, self.min_values)
        if loss - math.exp(self._window.minimum) < self.floor * start:
            # the excess over the level exp(median) >= exp(min) cannot reach the floor: no spike,
            # whatever the robust z (spares the MAD on most steps)
            self._take(loss)
            return []
        median, sigma = self._window.median_mad()
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


    def _early(self, step, loss):
        # the first loss, or the median so far if lower (a run that learns fast has a lower level)
        start = min(self._start[0], _median(self._start)) if self._start else None
        if self._early_fired or start is None or loss <= self.early_factor * start:
            self._take(loss)
            return []
        self._early_fired = True  # once: the losses after a blow-up are the run's new level
        self._window.add(math.log(loss))  # the robust rule takes over after min_values losses
        return [self.event(
            step, "warning",
            f"loss {loss:.4g} is {loss / start:.1f}x the level {start:.4g} of the first {len(self._start)} "
            f"step(s): an early blow-up (> {self.early_factor:g}x). Likely fix: lower the learning rate "
            "or lengthen the warm-up.",
            loss=loss, level=start, early=True, ratio=loss / start)]


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
        self._start_median: float | None = None
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
        median = self._recent.median()
        self._lowest = median if self._lowest is None else min(self._lowest, median)
        return median

    def detect(self, step, row):
        median = self._take(row.get("loss"))
        if median is None or self._lowest is None:
            return []
        start = _start_level(self, self.window)
        excess = median - self._lowest
        if median > (1 + self.rise) * self._lowest and excess >= self.floor * start:
            return [self.event(
                step, "warning",
                f"loss rising: median of the last {self.window} steps {median:.4g} is "
                f"{median / self._lowest:.2f}x its lowest {self._lowest:.4g}. Likely fix: lower the "
                "learning rate (policy loss_rise: lr_backoff); check the schedule.",
                value=median, lowest=self._lowest, ratio=median / self._lowest)]
        return []
