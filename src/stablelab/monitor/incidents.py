"""Incidents: consecutive events of the same cause grouped into one record with a start, a peak and
an end; an incident that opens shortly after another is linked to it as its consequence (a loss
spike after a gradient spike). The console prints one line when an incident opens and one when it
closes; the raw events are kept beside them.

Only warning and critical detector events open incidents; an intervention (an info event whose
`data["cause"]` names a detector kind) joins the incident of its cause."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stablelab.monitor.events import SEVERITIES, Event

# data keys that carry an event's magnitude, in order of preference (the peak is the largest)
_MAGNITUDE_KEYS = ("ratio", "value", "loss", "excess", "grad_norm")


def _magnitude(event: Event) -> float:
    for key in _MAGNITUDE_KEYS:
        value = event.data.get(key)
        if isinstance(value, (int, float)) and value == value:
            return abs(float(value))
    return 0.0


@dataclass
class Incident:
    """One incident: `kind` (the detector), `start`/`end` steps (inclusive), `peak` (the step of the
    largest event), its `events`, `severity` (the worst seen), the `actions` the guard took, and
    `cause` (the kind of the incident it followed, or None)."""

    kind: str
    start: int
    end: int
    peak: int
    severity: str
    events: list[Event] = field(default_factory=list)
    actions: list[Event] = field(default_factory=list)
    cause: str | None = None
    closed: bool = False
    _peak_magnitude: float = field(default=-1.0, repr=False)

    def add(self, event: Event) -> None:
        if event.severity == "info":
            self.actions.append(event)
            return
        if _magnitude(event) > self._peak_magnitude:
            self.peak, self._peak_magnitude = event.step, _magnitude(event)
        if SEVERITIES.index(event.severity) > SEVERITIES.index(self.severity):
            self.severity = event.severity
        self.events.append(event)
        self.end = max(self.end, event.step)

    @property
    def length(self) -> int:
        """Steps from its first event to its last, both included (a 3-step spike: 3)."""
        return self.end - self.start + 1

    def summary(self) -> str:
        steps = f"step {self.start}" if self.start == self.end else f"steps {self.start}-{self.end} ({self.length} steps)"
        acted = sorted({a.kind for a in self.actions})
        caused = f", after {self.cause}" if self.cause else ""
        return (f"{self.kind} ({self.severity}) {steps}, {len(self.events)} event(s), peak at step "
                f"{self.peak}{caused}" + (f"; guard: {', '.join(acted)}" if acted else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": self.start, "end": self.end, "length": self.length, "peak": self.peak,
                "severity": self.severity, "cause": self.cause, "n_events": len(self.events),
                "actions": sorted({a.kind for a in self.actions}), "closed": self.closed,
                "first_message": self.events[0].message if self.events else ""}


class IncidentTracker:
    """Groups events into incidents. `gap`: steps without an event of that kind after which an
    incident closes; `link`: an incident opening within `link` steps of another's end is its
    consequence."""

    def __init__(self, gap: int = 50, link: int = 50):
        self.gap, self.link = gap, link
        self.incidents: list[Incident] = []
        self._open: dict[str, Incident] = {}

    def add(self, events: list[Event]) -> tuple[list[Incident], list[Incident]]:
        """Add events (in step order); returns (incidents opened, incidents closed)."""
        opened, closed = [], []
        for event in sorted(events, key=lambda e: (e.step, e.severity == "info")):
            closed.extend(self.close_before(event.step))
            if event.severity == "info":
                owner = self._open.get(event.data.get("cause", ""))
                if owner is not None:
                    owner.add(event)
                continue
            current = self._open.get(event.kind)
            if current is None:
                current = Incident(event.kind, event.step, event.step, event.step, event.severity,
                                   cause=self._cause_of(event))
                self._open[event.kind] = current
                self.incidents.append(current)
                opened.append(current)
            current.add(event)
        return opened, closed

    def _cause_of(self, event: Event) -> str | None:
        candidates = [i for i in self.incidents if i.kind != event.kind and i.start <= event.step
                      and event.step - i.end <= self.link]
        return min(candidates, key=lambda i: i.start).kind if candidates else None

    def close_before(self, step: int) -> list[Incident]:
        """Close incidents whose last event is more than `gap` steps before `step`."""
        closed = [i for i in self._open.values() if step - i.end > self.gap]
        for incident in closed:
            incident.closed = True
            del self._open[incident.kind]
        return closed

    def close_all(self) -> list[Incident]:
        closed = list(self._open.values())
        for incident in closed:
            incident.closed = True
        self._open.clear()
        return closed
