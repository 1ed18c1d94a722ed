"""The detectors' thresholds for a log with one value every k steps.

A detector's robust statistics over 8-32 logged values are noisier than over 32-256 steps, and a
value logged every k steps sums k steps of drift, so the live monitor's thresholds (calibrated at
one value per step) raise more false warnings on a sparse log. LOG_THRESHOLDS is measured on the
detection benchmark's calibration split replayed as logs at each interval and at every logging
phase (`benchmarks/diagnose_calibrate.py BENCH_OUT`: per detector, the setting with the highest
recall that raises no false warning in the calibration's healthy runs, with or without
stablelab's columns in the log), never on the held-out seeds the docs report. At interval 1 the
live monitor's own defaults apply."""

from __future__ import annotations

from typing import Any

# logging interval -> {detector kind: {setting: value}}, pasted from `.venv/bin/python
# benchmarks/diagnose_calibrate.py /tmp/detect21` (the calibration split of docs/detect_bench's run:
# seed 0, 41,500 healthy steps, 22 faults; ten phases per interval, logs with and without
# stablelab's columns; no false warning at any of these; 2-core VM, 2026-12-07)
LOG_THRESHOLDS: dict[int, dict[str, dict[str, Any]]] = {
    5: {"grad_spike": {"z": 8.0}, "loss_spike": {"z": 5.0}, "loss_rise": {"rise": 0.3}, "update_ratio": {"factor": 5.0}},
    10: {"grad_spike": {"z": 8.0}, "loss_spike": {"z": 6.0}, "loss_rise": {"rise": 0.3}, "update_ratio": {"factor": 4.0}},
    25: {"grad_spike": {"z": 10.0}, "loss_spike": {"z": 6.0}, "loss_rise": {"rise": 0.3}, "update_ratio": {"factor": 4.0}},
    50: {"grad_spike": {"z": 10.0}, "loss_spike": {"z": 6.0}, "loss_rise": {"rise": 0.3}, "update_ratio": {"factor": 5.0}},
    100: {"grad_spike": {"z": 10.0}, "loss_spike": {"z": 6.0}, "loss_rise": {"rise": 0.3}, "update_ratio": {"factor": 5.0}},
}


def thresholds_for_interval(interval: int | None) -> dict[str, dict[str, Any]]:
    """The calibrated settings for a log every `interval` steps: those of the smallest measured
    interval at or above it (the sparser calibration is the stricter one), the largest measured
    beyond the table; nothing at interval 1 (the live monitor's defaults)."""
    if not interval or interval <= 1 or not LOG_THRESHOLDS:
        return {}
    measured = sorted(LOG_THRESHOLDS)
    at = next((k for k in measured if k >= interval), measured[-1])
    return {kind: dict(values) for kind, values in LOG_THRESHOLDS[at].items()}
