"""Events: what a detector saw or what the guard did, at one training step."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "critical")


@dataclass
class Event:
    """One detection or intervention.

    `kind` names the detector (`loss_spike`, ...) or, for an intervention, the action (`skip`, ...);
    `message` says what happened, the value, the threshold and the likely fix."""

    kind: str
    step: int
    severity: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"[step {self.step}] {self.severity} {self.kind}: {self.message}"


class TrainingStopped(RuntimeError):
    """Raised by the guard's `stop` intervention; carries the event that caused it."""

    def __init__(self, event: Event):
        super().__init__(f"training stopped by the stability guard at step {event.step}: "
                         f"{event.kind}: {event.message}")
        self.event = event
