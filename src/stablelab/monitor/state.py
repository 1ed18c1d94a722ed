"""Monitor.state_dict(): what a resumed run needs to go on where it stopped, the detectors'
windows and statistics, the typical gradient norm, the step number, the guard's pending skip and
the open incidents, in plain types (numbers, strings, lists, dicts, None) that both
`torch.load(..., weights_only=True)` and JSON (a Hugging Face `trainer_state.json`) read back.

Not kept: the rollback snapshot (the checkpoint being resumed from is itself a good state; the
next clean sampled step takes a new one), the opposing-signals history and the sharpness check's
Lanczos start vectors (both start again)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import torch

from stablelab.errors import UsageError
from stablelab.monitor.detectors.base import _Window
from stablelab.monitor.events import Event
from stablelab.monitor.incidents import Incident, IncidentTracker

if TYPE_CHECKING:
    from stablelab.monitor.core import Monitor

VERSION = 1
_TENSOR, _DEQUE, _WINDOW = "__tensor__", "__deque__", "__window__"
_NUMBERS = ("_log_typical", "_typical_count", "_g2_ema", "_ema_count", "_v_mean", "_suspect_run", "log_suspect")
_MEASURER = ("norm_history", "task", "task_reason", "_task_inferred", "_weight_norms", "_weight_norm_step")


def plain(value: Any) -> Any:
    """A value in plain types; tensors, deques and detector windows are tagged for `revive`."""
    if isinstance(value, torch.Tensor):
        return {_TENSOR: value.detach().cpu().tolist()}
    if isinstance(value, deque):
        return {_DEQUE: [plain(v) for v in value]}
    if isinstance(value, _Window):
        return {_WINDOW: list(value.values)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"no plain form for {type(value).__name__}")


def revive(current: Any, saved: Any, device: torch.device | None = None) -> Any:
    """`saved` (from `plain`) in the type of `current`, the live attribute it replaces."""
    if isinstance(saved, dict) and _TENSOR in saved:
        dtype = current.dtype if isinstance(current, torch.Tensor) else torch.float32
        where = current.device if isinstance(current, torch.Tensor) else device
        return torch.tensor(saved[_TENSOR], dtype=dtype, device=where)
    if isinstance(saved, dict) and _DEQUE in saved:
        maxlen = current.maxlen if isinstance(current, deque) else None
        return deque((tuple(v) if isinstance(v, list) else v for v in saved[_DEQUE]), maxlen=maxlen)
    if isinstance(saved, dict) and _WINDOW in saved:
        window = current if isinstance(current, _Window) else _Window(len(saved[_WINDOW]) or 1)
        window.replace(saved[_WINDOW])
        return window
    return saved


def capture(obj: Any, names) -> dict[str, Any]:
    return {name: plain(getattr(obj, name)) for name in names}


def restore(obj: Any, state: dict[str, Any], device: torch.device | None = None) -> None:
    for name, saved in state.items():
        setattr(obj, name, revive(getattr(obj, name, None), saved, device))


def detector_state(detector) -> dict[str, Any]:
    """A detector's history: its private attributes (windows, counters, last firing)."""
    return capture(detector, [k for k in vars(detector) if k.startswith("_")])


# -- incidents --------------------------------------------------------------------------------
def _incident_state(incident: Incident) -> dict[str, Any]:
    return {"kind": incident.kind, "start": incident.start, "end": incident.end, "peak": incident.peak,
            "severity": incident.severity, "cause": incident.cause, "closed": incident.closed,
            "peak_magnitude": incident._peak_magnitude,
            "events": [plain(e.to_dict()) for e in incident.events],
            "actions": [plain(e.to_dict()) for e in incident.actions]}


def tracker_state(tracker: IncidentTracker, step: int) -> dict[str, Any]:
    """The open incidents and those recent enough to be named as a later incident's cause."""
    kept = [i for i in tracker.incidents if not i.closed or step - i.end <= tracker.link]
    return {"incidents": [_incident_state(i) for i in kept],
            "open": [kept.index(i) for i in tracker._open.values()]}


def load_tracker(tracker: IncidentTracker, state: dict[str, Any]) -> None:
    incidents = []
    for s in state["incidents"]:
        incident = Incident(s["kind"], s["start"], s["end"], s["peak"], s["severity"],
                            events=[Event(**e) for e in s["events"]],
                            actions=[Event(**e) for e in s["actions"]], cause=s["cause"], closed=s["closed"])
        incident._peak_magnitude = s["peak_magnitude"]
        incidents.append(incident)
    tracker.incidents = incidents
    tracker._open = {incidents[i].kind: incidents[i] for i in state["open"]}


# -- the whole monitor --------------------------------------------------------------------------
def monitor_state(monitor: "Monitor") -> dict[str, Any]:
    measurer = monitor.measurer
    return {
        "version": VERSION, "step": monitor.step, "n_tensors": len(monitor.params),
        "skipped_steps": list(monitor.skipped_steps), "event_counts": monitor.event_counts(),
        "skip_next": monitor.guard.skip_next, "clean_since_snapshot": monitor._clean_since_snapshot,
        "detectors": {d.kind: detector_state(d) for d in monitor.detectors},
        "numbers": capture(measurer.numbers, _NUMBERS),
        "measurer": capture(measurer, _MEASURER),
        "incidents": tracker_state(monitor.tracker, monitor.step),
        "deferred": [plain(e.to_dict()) for e in monitor._deferred],
    }


def load_monitor_state(monitor: "Monitor", state: dict[str, Any], keep_step: bool = False) -> None:
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise UsageError("not a Monitor.state_dict() of this version "
                         f"(version {state.get('version') if isinstance(state, dict) else None!r}, expected {VERSION})")
    if state["n_tensors"] != len(monitor.params):
        raise UsageError(f"the monitor state is of a model with {state['n_tensors']} parameter tensors; "
                         f"this one has {len(monitor.params)}")
    measurer = monitor.measurer
    if not keep_step:  # an explicit start_step (the user's numbering) wins
        monitor.step = int(state["step"])
    monitor.skipped_steps = [int(s) for s in state["skipped_steps"]]
    monitor._skipped = set(monitor.skipped_steps)
    monitor._earlier_counts = {k: int(v) for k, v in state["event_counts"].items()}
    monitor.guard.skip_next = bool(state["skip_next"])
    monitor._clean_since_snapshot = bool(state["clean_since_snapshot"])
    for detector in monitor.detectors:
        if detector.kind in state["detectors"]:  # a detector switched on since starts fresh
            restore(detector, state["detectors"][detector.kind])
    restore(measurer.numbers, state["numbers"], measurer.device)
    restore(measurer, state["measurer"], measurer.device)
    load_tracker(monitor.tracker, state["incidents"])
    monitor._deferred = [Event(**e) for e in state["deferred"]]  # decided at the first step
    measurer.next_step(monitor.step % monitor.sync_every == 0)
    monitor._sample_weights = bool(monitor.update_ratio_every)  # the next update ratio's "before"
