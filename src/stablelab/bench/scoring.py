"""The detection benchmark's scoring: pure functions over the stored runs (flags, incidents, lead
time, damage, the summary table and the calibration curves). Definitions: see bench/detect.py and
docs/monitor.md."""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

STABLELAB = "stablelab"
INCIDENT_GAP = 50
POINT_FAULTS = ("grad_spike", "nan_batch", "inf_batch", "random_labels", "shuffled_tokens", "lr_jump")


def incidents_of(steps: Sequence[int], gap: int = INCIDENT_GAP) -> list[tuple[int, int]]:
    """Flagged steps -> (start, end) incidents: steps less than `gap` apart are one incident."""
    spans: list[list[int]] = []
    for step in sorted(steps):
        if spans and step - spans[-1][1] <= gap:
            spans[-1][1] = step
        else:
            spans.append([step, step])
    return [tuple(s) for s in spans]


def anchor_decisions(name: str, rows: Sequence[dict[str, Any]], settings: dict[str, Any] | None = None
                     ) -> tuple[list[int], int | None]:
    """(flagged steps, the step where the rule stops the run or None) of an anchor rule replayed on a
    stream of rows (loss, grad_norm), at its published defaults or `settings`. After a stop the run
    has ended: later rows are not read."""
    from stablelab.bench.anchors import build_anchor

    rule = build_anchor(name, **(settings or {}))
    flags = []
    for r in rows:
        decision = rule.update(r["step"], r.get("loss"), r.get("grad_norm"))
        if decision.flagged:
            flags.append(r["step"])
            if decision.stop:
                return flags, r["step"]
    return flags, None


def anchor_flags(name: str, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Steps an anchor rule flags on a stream of rows (loss, grad_norm), at its defaults."""
    return anchor_decisions(name, rows)[0]


def stablelab_flags(events: Sequence[dict[str, Any]]) -> list[int]:
    return sorted({e["step"] for e in events if e["severity"] in ("warning", "critical")})


def damage_point(losses: Sequence[float], fault_step: int, *, factor: float = 2.0) -> int | None:
    """First step at or after the fault where the median of 5 losses passes `factor` x the median
    of the 20 losses before the fault, or the loss is non-finite (stored as null); None if never."""
    losses = [math.nan if x is None else x for x in losses]
    before = [x for x in losses[max(0, fault_step - 20):fault_step] if math.isfinite(x)]
    if not before:
        return None
    level = statistics.median(before)
    for t in range(fault_step, len(losses)):
        if not math.isfinite(losses[t]):
            return t
        window = [x for x in losses[max(fault_step, t - 4):t + 1] if math.isfinite(x)]
        if len(window) >= min(5, t - fault_step + 1) and statistics.median(window) > factor * level:
            return t
    return None


def damage_ratio(probe_losses: dict[str, float], fault_step: int, stopped_at: int | None = None) -> float | None:
    """Probe loss 30 steps after the fault over the probe loss just before it (inf if non-finite,
    stored as null)."""
    key = str(fault_step + 30)
    before, after = probe_losses.get(str(fault_step - 1)), probe_losses.get(key)
    if stopped_at is not None and stopped_at <= fault_step + 30:
        return None
    if key in probe_losses and after is None:
        after = math.inf
    if before is None or after is None or not math.isfinite(before) or before <= 0:
        return None
    return after / before if math.isfinite(after) else math.inf


def calibrate(scenarios: Sequence[Any], runs: dict[tuple[int, str], dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """The detectors' threshold curves (stablelab.monitor.calibration) on the calibration split's runs."""
    from stablelab.monitor.calibration import calibration_curves

    healthy = [runs[(seed, s.name)]["default"]["rows"] for seed in seeds for s in scenarios if s.kind == "healthy"]
    faults = [(s.fault_step, s.window, runs[(seed, s.name)]["warn_only"]["rows"])
              for seed in seeds for s in scenarios if s.kind == "fault"]
    return calibration_curves(healthy, faults)
