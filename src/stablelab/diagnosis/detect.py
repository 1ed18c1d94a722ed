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
import torch

from stablelab.diagnosis.calibration import thresholds_for_interval
from stablelab.monitor.detectors import build_detectors, trust_rule
from stablelab.monitor.events import Event
from stablelab.monitor.incidents import IncidentTracker
from stablelab.monitor.settings import MonitorSettings
from stablelab.monitor.step_numbers import GlobalNormNumbers, HostStepNumbers

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


def _positions(steps: np.ndarray, logged_at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each logged step sits in the sorted `steps`, and whether it is one of them."""
    index = np.searchsorted(steps, logged_at)
    return index, (index < len(steps)) & (steps[np.minimum(index, len(steps) - 1)] == logged_at)


def aligned(series: dict[str, tuple[np.ndarray, np.ndarray]]
            ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Every logged step of the loss (and of the gradient norm); per signal, its value there and
    whether it was logged at that step (a logged NaN is a value: the nonfinite detector's)."""
    keys = [k for k in ("loss", "grad_norm") if k in series]
    steps = np.unique(np.concatenate([series[k][0] for k in keys]))
    columns = {}
    for name, (s, v) in series.items():
        at, logged = np.full(len(steps), np.nan), np.zeros(len(steps), dtype=bool)
        index, inside = _positions(steps, s)
        at[index[inside]] = v[inside]
        logged[index[inside]] = True
        columns[name] = (at, logged)
    return steps, columns


# the monitor's own per-step numbers (rows of a stablelab Monitor forwarded to a logger): computed on
# every step from every tensor's norm, so a log that has them needs no re-estimate from one norm
STEP_NUMBERS = ("grad_norm_typical", "grad_norm_ratio_min", "outlier", "trusted", "nonfinite")
_FLAGS = {"outlier": bool, "trusted": int, "nonfinite": bool}


class OneNorm:
    """The monitor's gradient rule re-run on the logged global norm (`GlobalNormNumbers`). Without
    per-tensor norms there is no "every tensor grew at once" reading unless `coherent`."""

    def __init__(self, numbers: GlobalNormNumbers, coherent: bool):
        self.numbers, self.coherent = numbers, coherent
        self.set_suspect_level = numbers.set_suspect_level

    def fill(self, i: int, row: dict) -> None:
        if "grad_norm" not in row:
            return
        typical, ratio, outlier, trusted = self.numbers.read(row["grad_norm"], row.get("loss"))
        row["grad_norm_typical"] = typical
        if self.coherent:
            row["grad_norm_ratio_min"] = ratio
        row["outlier"], row["trusted"] = outlier, int(trusted)


class PerTensor:
    """The monitor's rule on logged per-tensor norms (`HostStepNumbers`, as live on the CPU): the
    typical norms, the "every tensor" ratio and the per-tensor spike ratio (mean(g^2) over its
    running mean, which needs no parameter count: both sides divide by it). A tensor not logged at
    a step counts as a zero norm there (left out of the "every tensor" minimum, as live)."""

    def __init__(self, numbers: HostStepNumbers, matrix: np.ndarray, logged: np.ndarray, names: list[str]):
        self.numbers, self.matrix, self.logged, self.names = numbers, matrix, logged, names
        self.set_suspect_level = numbers.set_suspect_level

    def fill(self, i: int, row: dict) -> None:
        if not self.logged[i]:
            return
        fast = self.numbers.step(self.matrix[i].tolist(), row.get("loss"))
        _, global_norm, spike, where, _, outlier, typical, coherent, trusted = fast
        row.setdefault("grad_norm", global_norm)
        row.update(grad_norm_typical=typical, grad_norm_ratio_min=coherent, spike_ratio_max=spike,
                   spike_param=self.names[int(where)], outlier=bool(outlier), trusted=int(trusted))


def tensor_matrix(tensors: dict[str, tuple[np.ndarray, np.ndarray]], steps: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(rows x tensors norms at `steps`, 0 where a tensor was not logged; whether any was logged)."""
    matrix = np.zeros((len(steps), len(tensors)))
    logged = np.zeros(len(steps), dtype=bool)
    for j, (s, v) in enumerate(tensors.values()):
        index, inside = _positions(steps, s)
        matrix[index[inside], j] = v[inside]
        logged[index[inside]] = True
    return matrix, logged


def rows_of(steps: np.ndarray, columns: dict[str, tuple[np.ndarray, np.ndarray]],
            numbers: "OneNorm | PerTensor | None") -> Iterator[dict]:
    """One row per logged step, built as it is used (a long log is never held as a million dicts).
    numbers: the monitor's gradient rule re-run on what the log holds (None when the log carries
    the monitor's own numbers)."""
    plain = [(name, *columns[name]) for name in columns if name not in _FLAGS]
    flags = [(name, _FLAGS[name], *columns[name]) for name in columns if name in _FLAGS]
    for i in range(len(steps)):
        row = {"step": int(steps[i])}
        for name, values, logged in plain:
            if logged[i]:
                row[name] = float(values[i])
        for name, cast, values, logged in flags:
            if logged[i]:
                value = float(values[i])
                row[name] = cast(value) if math.isfinite(value) else value
        if numbers is not None:
            numbers.fill(i, row)
        loss = row.get("loss")
        row["nonfinite"] = bool(row.get("nonfinite")) or (loss is not None and not math.isfinite(loss)) or (
            "grad_norm" in row and not math.isfinite(row["grad_norm"]))
        yield row


def detect(series: dict[str, tuple[np.ndarray, np.ndarray]], settings: MonitorSettings | None = None,
           progress=None, interval: int | None = None, one_norm_coherent: bool = False,
           tensors: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> Detection:
    """Run every detector the log's signals allow over its rows; events and incidents as the live
    monitor makes them (row index as the detectors' clock, the logged step in what they report).
    interval: the logging interval; spans counted in steps (warm-ups, windows, the incident gap,
    the outlier rule's warm-up) are scaled to the same span in logged values (`interval_settings`)
    and the thresholds are those calibrated for the interval (`calibration.thresholds_for_interval`).
    A log with the monitor's own gradient numbers (`STEP_NUMBERS`) is judged on them; one with
    per-tensor gradient norms (`tensors`: parameter -> (steps, norms)) gets the monitor's rule on
    them (`PerTensor`); otherwise the rule runs on the logged global norm, without grad_spike's
    "every tensor" reading unless one_norm_coherent (on the benchmark's calibration split the one
    norm standing in for every tensor added a false warning and no detection)."""
    settings = settings or MonitorSettings()
    if tensors and "grad_norm" not in series:  # the global norm of the logged tensors
        steps = np.unique(np.concatenate([s for s, _ in tensors.values()]))
        series = {**series, "grad_norm": (steps, np.sqrt((tensor_matrix(tensors, steps)[0] ** 2).sum(axis=1)))}
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
    steps, columns = aligned(series)
    numbers = None
    warmup = max(1, math.ceil(settings.outlier_warmup / scale))
    trust = trust_rule(detectors, max(2, math.ceil(settings.outlier_patience / scale)))
    if tensors and "grad_norm_typical" not in series:
        matrix, logged = tensor_matrix(tensors, steps)
        host = HostStepNumbers([1] * len(tensors), torch.device("cpu"), settings.outlier_factor, warmup, trust)
        numbers = PerTensor(host, matrix, logged, list(tensors))
    elif "grad_norm" in series and "grad_norm_typical" not in series:
        trust = trust if one_norm_coherent else replace(trust, coherent=math.inf)
        numbers = OneNorm(GlobalNormNumbers(settings.outlier_factor, warmup, trust), one_norm_coherent)
    spike = next((d for d in on if d.kind == "grad_spike"), None)
    gap = max(2, math.ceil(settings.incident_gap / scale))
    tracker = IncidentTracker(gap=gap, link=gap)
    events: list[Event] = []
    for index, row in enumerate(rows_of(steps, columns, numbers)):
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
