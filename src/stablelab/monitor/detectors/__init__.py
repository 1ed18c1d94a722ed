"""Detectors turn signals into events. One registry (`DETECTORS`), one class per kind.

Every detector reads one step's row of host values (`check(step, row)`), keeps whatever history it
needs, and returns the events it raises. Thresholds have documented defaults, a warm-up (steps or
values seen before it may fire) and are set by keyword: `Monitor(..., detectors={"loss_spike":
{"z": 8.0}, "eps_floor": False})`. Keys a detector needs that are missing from a row (a signal
that was not sampled at that step) make it return nothing for that row.

The classes live by what they read: base.py (the Detector base, robust statistics), loss.py,
gradients.py, logits.py, curvature.py, opposing.py; this module holds the registry and re-exports them all."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from stablelab.errors import UsageError
from stablelab.monitor.detectors.base import Detector, _finite, _median, _number, _Window
from stablelab.monitor.detectors.curvature import EdgeOfStability
from stablelab.monitor.detectors.gradients import EpsFloor, GradOutlier, GradSpike, UpdateRatio
from stablelab.monitor.detectors.logits import AttnLogitGrowth, LogitDivergence, SoftmaxCollapse
from stablelab.monitor.detectors.loss import LossRise, LossSpike, NonFinite
from stablelab.monitor.detectors.opposing import OpposingSignals
from stablelab.monitor.step_numbers import TrustRule

__all__ = [
    "DETECTORS", "Detector", "register_detector", "build_detectors", "default_settings",
    "monitor_detector_settings", "trust_rule",
    "NonFinite", "LossSpike", "LossRise", "GradOutlier", "GradSpike", "UpdateRatio", "EpsFloor",
    "AttnLogitGrowth", "LogitDivergence", "SoftmaxCollapse", "EdgeOfStability", "OpposingSignals",
    "_finite", "_median", "_number", "_Window",
]


DETECTORS: dict[str, type[Detector]] = {
    cls.kind: cls for cls in (NonFinite, GradOutlier, GradSpike, LossSpike, LossRise, UpdateRatio,
                              AttnLogitGrowth, LogitDivergence, SoftmaxCollapse, EpsFloor, EdgeOfStability,
                              OpposingSignals)
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


def monitor_detector_settings(detectors: dict[str, Any] | None, target_false_alarm_rate: float | None,
                              grad_scaler: Any) -> dict[str, Any] | None:
    """The overrides a Monitor's arguments imply: thresholds read off the calibration curves for a
    target false-alarm rate (explicit settings win), and GradScaler-aware non-finite events."""
    if target_false_alarm_rate is not None:
        from stablelab.monitor.calibration import thresholds_for

        detectors = {**thresholds_for(target_false_alarm_rate), **(detectors or {})}
    if grad_scaler is not None:
        if not hasattr(grad_scaler, "unscale_"):
            raise UsageError(f"grad_scaler must be a torch.amp.GradScaler, got {type(grad_scaler).__name__}")
        detectors = dict(detectors or {})
        if detectors.get("nonfinite", {}) is not False:
            detectors["nonfinite"] = {"grad_scaler": True, **(detectors.get("nonfinite") or {})}
    return detectors


def trust_rule(detectors: list[Detector], patience: int) -> TrustRule:
    """The steps the typical gradient norms learn from: those grad_spike would not flag (its
    thresholds, or its defaults when it is switched off), with a lasting shift accepted after
    `patience` suspect steps in a row."""
    spike = next((d for d in detectors if isinstance(d, GradSpike)), GradSpike())
    return TrustRule(factor=spike.factor, coherent=spike.coherent, patience=patience)
