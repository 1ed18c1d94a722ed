"""Calibration of the detectors' thresholds against the detection benchmark.

`stablelab detect-bench` stores every run's per-step rows; `calibration_curves` replays each
detector over them at a grid of thresholds (a detector is a pure function of the row stream, so a
replay on a warn-only run is exact) and measures, per threshold, the false warnings per 1,000
healthy steps and the recall on the planted faults. The defaults in `stablelab.monitor.detectors`
were chosen from these curves (docs/monitor.md shows them), and `thresholds_for(rate)` reads them
back for a user who asks for a false-alarm rate instead of raw thresholds.

CURVES below is the table measured on the benchmark's calibration split (`stablelab detect-bench
--out DIR`, file DIR/calibration.json), never on the held-out seeds it reports; rerun the benchmark
and paste its table to recalibrate."""

from __future__ import annotations

import math
from typing import Any, Sequence

from stablelab.errors import UsageError

# detector kind -> (setting, grid of values, most sensitive first)
GRIDS: dict[str, tuple[str, tuple[float, ...]]] = {
    "grad_spike": ("z", (4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0)),
    "loss_spike": ("z", (3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0)),
    "loss_rise": ("rise", (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)),
    "update_ratio": ("factor", (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 20.0)),
}


def replay(kind: str, settings: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[int]:
    """Steps at which detector `kind` with `settings` raises a warning or critical event."""
    from stablelab.monitor.detectors import DETECTORS

    detector = DETECTORS[kind](**settings)
    flagged = []
    for row in rows:
        events = detector.check(row["step"], row)
        if any(e.severity != "info" for e in events):
            flagged.append(row["step"])
    return flagged


def _incidents(steps: Sequence[int], gap: int = 50) -> int:
    count, last = 0, None
    for step in sorted(steps):
        if last is None or step - last > gap:
            count += 1
        last = step
    return count


def calibration_curves(healthy: Sequence[Sequence[dict[str, Any]]],
                       faults: Sequence[tuple[int, int, Sequence[dict[str, Any]]]]) -> dict[str, Any]:
    """For each detector in GRIDS and each value of its setting: false warnings per 1k healthy steps
    (incidents, as the benchmark counts them) and the fraction of faults it flags within their
    window. `healthy`: row streams; `faults`: (fault_step, window, rows) of warn-only runs."""
    steps = sum(len(rows) for rows in healthy)
    curves: dict[str, Any] = {}
    for kind, (setting, grid) in GRIDS.items():
        points = []
        for value in grid:
            false = sum(_incidents(replay(kind, {setting: value}, rows)) for rows in healthy)
            hits = 0
            for fault_step, window, rows in faults:
                flagged = replay(kind, {setting: value}, rows)
                hits += any(fault_step <= s <= fault_step + window for s in flagged)
            points.append({"value": value, "false_warnings_per_1k": 1000.0 * false / max(steps, 1),
                           "recall": hits / max(len(faults), 1)})
        curves[kind] = {"setting": setting, "points": points}
    return {"healthy_steps": steps, "faults": len(faults), "curves": curves}


# Measured on the detection benchmark's calibration split (full suite, seed 0, faults planted 30
# steps earlier at 0.8x size): 41,500 healthy steps (the long converged runs included), 22 faults,
# 2-core CPU VM, 2026-12-07 (`stablelab detect-bench --out DIR`, DIR/calibration.json).
HEALTHY_STEPS = 41500
CURVES: dict[str, dict[str, Any]] = {
    "grad_spike": {"setting": "z", "points": [{"value": 4.0, "false_warnings_per_1k": 0.09639, "recall": 0.5909}, {"value": 5.0, "false_warnings_per_1k": 0.09639, "recall": 0.5}, {"value": 6.0, "false_warnings_per_1k": 0.07229, "recall": 0.4545}, {"value": 8.0, "false_warnings_per_1k": 0, "recall": 0.3636}, {"value": 10.0, "false_warnings_per_1k": 0, "recall": 0.3636}, {"value": 12.0, "false_warnings_per_1k": 0, "recall": 0.3182}, {"value": 16.0, "false_warnings_per_1k": 0, "recall": 0.3182}, {"value": 24.0, "false_warnings_per_1k": 0, "recall": 0.3182}]},
    "loss_spike": {"setting": "z", "points": [{"value": 3.0, "false_warnings_per_1k": 0.07229, "recall": 0.4545}, {"value": 4.0, "false_warnings_per_1k": 0, "recall": 0.4545}, {"value": 5.0, "false_warnings_per_1k": 0, "recall": 0.4091}, {"value": 6.0, "false_warnings_per_1k": 0, "recall": 0.3636}, {"value": 8.0, "false_warnings_per_1k": 0, "recall": 0.3182}, {"value": 10.0, "false_warnings_per_1k": 0, "recall": 0.1818}, {"value": 15.0, "false_warnings_per_1k": 0, "recall": 0.09091}]},
    "loss_rise": {"setting": "rise", "points": [{"value": 0.05, "false_warnings_per_1k": 0, "recall": 0.2727}, {"value": 0.1, "false_warnings_per_1k": 0, "recall": 0.2727}, {"value": 0.2, "false_warnings_per_1k": 0, "recall": 0.2727}, {"value": 0.3, "false_warnings_per_1k": 0, "recall": 0.2727}, {"value": 0.5, "false_warnings_per_1k": 0, "recall": 0.2727}, {"value": 1.0, "false_warnings_per_1k": 0, "recall": 0.2727}]},
    "update_ratio": {"setting": "factor", "points": [{"value": 2.0, "false_warnings_per_1k": 0.6265, "recall": 0.4545}, {"value": 3.0, "false_warnings_per_1k": 0.2169, "recall": 0.4091}, {"value": 4.0, "false_warnings_per_1k": 0, "recall": 0.3636}, {"value": 5.0, "false_warnings_per_1k": 0, "recall": 0.2727}, {"value": 6.0, "false_warnings_per_1k": 0, "recall": 0.2727}, {"value": 8.0, "false_warnings_per_1k": 0, "recall": 0.2727}, {"value": 12.0, "false_warnings_per_1k": 0, "recall": 0.2273}, {"value": 20.0, "false_warnings_per_1k": 0, "recall": 0.2273}]},
}


ZERO_COUNT_95 = 3.689  # 95% upper bound of a Poisson count when none was seen (Garwood 1936)


def smallest_supported_rate(healthy_steps: int) -> float:
    """The lowest false-warning rate per step that `healthy_steps` can support: with no false warning
    seen, the 95% upper bound is 3.69 / steps; a stricter target cannot be told apart from it."""
    return ZERO_COUNT_95 / healthy_steps


def thresholds_for(rate: float, curves: dict[str, dict[str, Any]] | None = None,
                   healthy_steps: int | None = None) -> dict[str, dict[str, float]]:
    """Detector settings whose measured false-warning rate per healthy step is at most `rate`
    (in (0, 1)): per detector the most sensitive grid value that meets it, else the least
    sensitive one. Detectors without a curve keep their defaults. A rate below what the curves'
    healthy steps can support (`smallest_supported_rate`) is refused in one line."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1 or math.isnan(rate):
        raise UsageError(f"target false-alarm rate must be a number in (0, 1), got {rate!r}")
    if curves is None:
        curves, healthy_steps = CURVES, HEALTHY_STEPS
    if healthy_steps and rate < smallest_supported_rate(healthy_steps):
        raise UsageError(f"target false-alarm rate {rate:g} per step is below what the calibration's "
                         f"{healthy_steps} healthy steps can support: use at least "
                         f"{smallest_supported_rate(healthy_steps):.2g} (3.69 / steps)")
    chosen: dict[str, dict[str, float]] = {}
    for kind, curve in curves.items():
        points = curve["points"]
        ok = [p for p in points if p["false_warnings_per_1k"] / 1000.0 <= rate]
        pick = ok[0] if ok else points[-1]
        chosen[kind] = {curve["setting"]: pick["value"]}
    return chosen
