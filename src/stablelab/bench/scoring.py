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


def anchor_flags(name: str, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Steps an anchor rule flags on a stream of rows (loss, grad_norm)."""
    from stablelab.bench.anchors import build_anchor

    rule = build_anchor(name)
    return [r["step"] for r in rows if rule.update(r["step"], r.get("loss"), r.get("grad_norm")).flagged]


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


def evaluate(scenarios: Sequence[Any], runs: dict[str, dict[str, Any]], detector_sets: Sequence[str]) -> dict[str, Any]:
    """summary.json's content from the scenarios and their stored runs."""
    from stablelab.bench.anchors import ANCHORS

    rows_out, healthy_steps = [], 0
    per: dict[str, dict[str, list]] = {d: {"recall": [], "false": [], "lead": [], "damage": [], "damage_1000x": []}
                                       for d in detector_sets}
    for scenario in scenarios:
        run = runs[scenario.name]
        fault = scenario.kind == "fault"
        base = run["warn_only"] if fault else run["default"]
        row: dict[str, Any] = {"name": scenario.name, "kind": scenario.kind, "family": scenario.family,
                               "fault": scenario.fault, "fault_step": scenario.fault_step,
                               "window": scenario.window, "steps": scenario.steps, "by_detector": {}}
        if not fault:
            healthy_steps += len(run["default"]["losses"])
        hit = damage_point(base["losses"], scenario.fault_step) if fault else None
        row["damage_step_unguarded"] = hit
        for name in detector_sets:
            if name == STABLELAB:
                flags = stablelab_flags(run["default"]["events"])
                live = run["default"]
            else:
                flags = anchor_flags(name, base["rows"] if fault else run["default"]["rows"])
                live = run.get(f"live:{name}", run.get("warn_only"))
            result: dict[str, Any] = {}
            if fault:
                lo, hi = scenario.fault_step, scenario.fault_step + scenario.window
                inside = [s for s in flags if lo <= s <= hi]
                after = [s for s in flags if s >= lo]
                result["flagged"] = bool(inside)
                result["first_warning_step"] = after[0] if after else None
                result["warnings_before_fault"] = len(incidents_of([s for s in flags if s < lo]))
                lead = hit - after[0] if (hit is not None and after) else None
                result["lead_steps"] = lead
                stopped = ANCHORS[name].action == "stop" if name in ANCHORS else False
                if stopped and inside:
                    result["damage_ratio"] = None   # training stopped at the first flag
                else:
                    result["damage_ratio"] = damage_ratio(live["probe_losses"], scenario.fault_step,
                                                          live.get("stopped_at"))
                per[name]["recall"].append(result["flagged"])
                if lead is not None and scenario.fault == "lr_runaway":
                    per[name]["lead"].append(lead)
                if scenario.fault in POINT_FAULTS and result["damage_ratio"] is not None:
                    per[name]["damage"].append(result["damage_ratio"])
                if scenario.fault == "grad_spike" and scenario.settings.get("factor") == 1000 \
                        and result["damage_ratio"] is not None:
                    per[name]["damage_1000x"].append(result["damage_ratio"])
            else:
                result["false_warnings"] = len(incidents_of(flags))
                result["first_warning_step"] = flags[0] if flags else None
                per[name]["false"].append(result["false_warnings"])
            row["by_detector"][name] = result
        main = row["by_detector"].get(STABLELAB) or next(iter(row["by_detector"].values()))
        row["flagged"] = main.get("flagged", bool(main.get("false_warnings")))
        row["first_warning_step"] = main.get("first_warning_step")
        rows_out.append(row)
    detectors = {}
    for name in detector_sets:
        p = per[name]
        detectors[name] = {
            "recall": (sum(p["recall"]) / len(p["recall"])) if p["recall"] else None,
            "false_warnings_per_1k": (1000.0 * sum(p["false"]) / healthy_steps) if healthy_steps else None,
            "median_lead_steps": statistics.median(p["lead"]) if p["lead"] else None,
            "damage_ratio_default_policy": max(p["damage_1000x"]) if p["damage_1000x"] else None,
            "median_damage_ratio_point_faults": statistics.median(p["damage"]) if p["damage"] else None,
            "action": "default policy" if name == STABLELAB else (ANCHORS[name].action or "log only"),
        }
    return {"suites": {"healthy_steps": healthy_steps,
                       "faults": sum(1 for s in scenarios if s.kind == "fault"),
                       "healthy_runs": sum(1 for s in scenarios if s.kind == "healthy")},
            "detectors": detectors, "scenarios": rows_out}


def calibrate(scenarios: Sequence[Any], runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The detectors' threshold curves (stablelab.monitor.calibration) on this suite's runs."""
    from stablelab.monitor.calibration import calibration_curves

    healthy = [runs[s.name]["default"]["rows"] for s in scenarios if s.kind == "healthy"]
    faults = [(s.fault_step, s.window, runs[s.name]["warn_only"]["rows"]) for s in scenarios if s.kind == "fault"]
    return calibration_curves(healthy, faults)
