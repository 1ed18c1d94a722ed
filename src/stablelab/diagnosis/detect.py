"""The monitor's detectors on a log's rows. Each logged row is one observation: the detectors'
windows and warm-ups count logged values (so their span in steps grows with the logging interval),
the typical gradient norm is the monitor's own rule (`monitor.step_numbers`) run on the logged
global norm, and a detector whose signal the log lacks is off. Events and incidents carry the
logged step."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np

from stablelab.diagnosis.calibration import thresholds_for_interval
from stablelab.monitor.detectors import build_detectors, trust_rule
from stablelab.monitor.events import Event
from stablelab.monitor.incidents import IncidentTracker
from stablelab.monitor.settings import MonitorSettings
from stablelab.monitor.step_numbers import GlobalNormNumbers

# detector kind -> the logged signals it needs (a kind missing here needs a live monitor)
NEEDS: dict[str, tuple[str, ...]] = {
    "nonfinite": ("loss",), "loss_spike": ("loss",), "loss_rise": ("loss",),
    "grad_outlier": ("grad_norm",), "grad_spike": ("grad_norm",), "update_ratio": ("update_ratio_max",),
    "attn_logit_growth": ("attn_logit_max",), "logit_divergence": ("log_z_mean",),
    "softmax_collapse": ("softmax_collapse_fraction",), "eps_floor": ("eps_ratio_min",),
}


# the detector settings counted in steps, and the least each keeps when counted in logged values
# (never more than its live default): a robust median and MAD over fewer than 32 values raised false
# warnings on the calibration split's sparse logs (benchmarks/diagnose_calibrate.py: at floors of 8
# and 16 values, 14 and 5 false incidents over its replays at intervals 5-10; none at 32)
_IN_STEPS = {"warmup": 0, "cooldown": 1, "min_values": 32, "window": 32}


def interval_settings(interval: int | None) -> dict[str, dict[str, int]]:
    """Detector overrides for a log with one value every `interval` steps: every warm-up and
    cool-down counted in steps becomes the same span in logged values, so a fault at step 200 of a
    log every 50 steps meets armed detectors; a window or minimum history keeps at least 32 values
    (or its live count, if smaller), so its robust statistics are as steady as live, and spans more
    steps."""
    from dataclasses import fields

    from stablelab.monitor.detectors import DETECTORS

    if not interval or interval <= 1:
        return {}
    overrides: dict[str, dict[str, int]] = {}
    for kind, cls in DETECTORS.items():
        scaled = {}
        for f in fields(cls):
            if f.name in _IN_STEPS and isinstance(f.default, int) and f.default > 0:
                scaled[f.name] = max(min(_IN_STEPS[f.name], f.default), math.ceil(f.default / interval))
        if "window" in scaled and "min_values" in scaled:
            scaled["min_values"] = min(scaled["min_values"], scaled["window"])
        if scaled:
            overrides[kind] = scaled
    return overrides


@dataclass
class Detection:
    events: list[Event]
    incidents: list[Any]
    detectors_on: list[str]
    detectors_off: dict[str, str]  # kind -> why
    steps: np.ndarray | None = None  # the logged steps and the signals at them (`aligned`), for the page
    columns: dict[str, tuple[np.ndarray, np.ndarray]] | None = None


def aligned(series: dict[str, tuple[np.ndarray, np.ndarray]]
            ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Every logged step of the loss (and of the gradient norm); per signal, its value there and
    whether it was logged at that step (a logged NaN is a value: the nonfinite detector's)."""
    keys = [k for k in ("loss", "grad_norm") if k in series]
    steps = np.unique(np.concatenate([series[k][0] for k in keys]))
    columns = {}
    for name, (s, v) in series.items():
        at, logged = np.full(len(steps), np.nan), np.zeros(len(steps), dtype=bool)
        index = np.searchsorted(steps, s)
        inside = (index < len(steps)) & (steps[np.minimum(index, len(steps) - 1)] == s)
        at[index[inside]] = v[inside]
        logged[index[inside]] = True
        columns[name] = (at, logged)
    return steps, columns


# the monitor's own per-step numbers (rows of a stablelab Monitor forwarded to a logger): computed on
# every step from every tensor's norm, so a log that has them needs no re-estimate from one norm
STEP_NUMBERS = ("grad_norm_typical", "grad_norm_ratio_min", "outlier", "trusted", "nonfinite")
_FLAGS = {"outlier": bool, "trusted": int, "nonfinite": bool}


def rows_of(steps: np.ndarray, columns: dict[str, tuple[np.ndarray, np.ndarray]],
            numbers: GlobalNormNumbers | None, coherent: bool = True) -> Iterator[dict]:
    """One row per logged step, built as it is used (a long log is never held as a million dicts).
    numbers: the monitor's rule re-run on the logged global norm (None when the log carries the
    monitor's own numbers); coherent: whether that one-norm rule stands in for "every tensor's
    norm" (grad_norm_ratio_min), which a log without per-tensor norms cannot show."""
    plain = [(name, *columns[name]) for name in columns if name not in _FLAGS]
    flags = [(name, _FLAGS[name], *columns[name]) for name in columns if name in _FLAGS]
    grad = columns.get("grad_norm")
    for i in range(len(steps)):
        row = {"step": int(steps[i])}
        for name, values, logged in plain:
            if logged[i]:
                row[name] = float(values[i])
        for name, cast, values, logged in flags:
            if logged[i]:
                value = float(values[i])
                row[name] = cast(value) if math.isfinite(value) else value
        if numbers is not None and grad is not None and grad[1][i]:
            typical, ratio, outlier, trusted = numbers.read(float(grad[0][i]), row.get("loss"))
            row["grad_norm_typical"] = typical
            if coherent:
                row["grad_norm_ratio_min"] = ratio
            row["outlier"], row["trusted"] = outlier, int(trusted)
        loss = row.get("loss")
        row["nonfinite"] = bool(row.get("nonfinite")) or (loss is not None and not math.isfinite(loss)) or (
            "grad_norm" in row and not math.isfinite(row["grad_norm"]))
        yield row


def detect(series: dict[str, tuple[np.ndarray, np.ndarray]], settings: MonitorSettings | None = None,
           progress=None, interval: int | None = None, one_norm_coherent: bool = False) -> Detection:
    """Run every detector the log's signals allow over its rows; events and incidents as the live
    monitor makes them (row index as the detectors' clock, the logged step in what they report).
    interval: the logging interval; spans counted in steps (warm-ups, windows, the incident gap,
    the outlier rule's warm-up) are scaled to the same span in logged values (`interval_settings`)
    and the thresholds are those calibrated for the interval (`calibration.thresholds_for_interval`).
    A log with the monitor's own gradient numbers (`STEP_NUMBERS`) is judged on them; otherwise the
    monitor's rule runs on the logged global norm, without grad_spike's "every tensor" reading
    unless one_norm_coherent (on the benchmark's calibration split the one norm standing in for
    every tensor added a false warning and no detection)."""
    settings = settings or MonitorSettings()
    scale = interval if interval and interval > 1 else 1
    overrides = interval_settings(scale)
    for kind, values in thresholds_for_interval(scale).items():  # calibrated for the interval
        overrides[kind] = {**overrides.get(kind, {}), **values}
    for kind, values in (settings.detectors or {}).items():  # explicit settings win
        overrides[kind] = values if values is False else {**overrides.get(kind, {}), **values}
    detectors = build_detectors(overrides)
    on = [d for d in detectors if d.kind in NEEDS and all(s in series for s in NEEDS[d.kind])]
    off = {d.kind: ("needs " + ", ".join(s for s in NEEDS.get(d.kind, ()) if s not in series)
                    if d.kind in NEEDS else "needs a live monitor (a scheduled check)")
           for d in detectors if d not in on}
    numbers = None
    if "grad_norm" in series and "grad_norm_typical" not in series:
        trust = trust_rule(detectors, max(2, math.ceil(settings.outlier_patience / scale)))
        if not one_norm_coherent:
            trust = replace(trust, coherent=math.inf)
        numbers = GlobalNormNumbers(settings.outlier_factor, max(1, math.ceil(settings.outlier_warmup / scale)),
                                    trust)
    spike = next((d for d in on if d.kind == "grad_spike"), None)
    steps, columns = aligned(series)
    gap = max(2, math.ceil(settings.incident_gap / scale))
    tracker = IncidentTracker(gap=gap, link=gap)
    events: list[Event] = []
    for index, row in enumerate(rows_of(steps, columns, numbers, one_norm_coherent)):
        found = []
        for detector in on:
            for event in detector.check(index, row):
                event.data["row"] = index
                event.step = row["step"]
                found.append(event)
        if found:
            events.extend(found)
            tracker.add([_indexed(e) for e in found])
        if spike is not None and numbers is not None and index % max(1, settings.sync_every // scale) == 0:
            numbers.set_suspect_level(spike.suspect_level())  # as the monitor shares it at read-backs
        if progress is not None and index % 65536 == 0:
            progress(index)
    tracker.close_all()
    incidents = [_stepped(i, steps) for i in tracker.incidents]
    return Detection(events, incidents, [d.kind for d in on], off, steps, columns)


def _indexed(event: Event) -> Event:
    """The event on the row clock, for the tracker's gap (counted in logged rows)."""
    return Event(event.kind, event.data["row"], event.severity, event.message, event.data)


def _stepped(incident, steps: np.ndarray):
    incident.start, incident.end, incident.peak = (int(steps[incident.start]), int(steps[incident.end]),
                                                   int(steps[incident.peak]))
    for event in incident.events + incident.actions:
        event.step = int(steps[event.data["row"]]) if "row" in event.data else event.step
    return incident
