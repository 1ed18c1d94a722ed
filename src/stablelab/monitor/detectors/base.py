"""The detector base class and the robust statistics the detectors share."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from stablelab.monitor.events import SEVERITIES, Event


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@dataclass
class Detector:
    """Base: `kind` names the event; `warmup` and `cooldown` are counted in steps."""

    kind: ClassVar[str] = ""
    # signals this detector reads every step (the guard can then act before the optimizer steps)
    every_step: ClassVar[bool] = False
    warmup: int = 0
    cooldown: int = 0

    def __post_init__(self):
        self._last_fired: int | None = None
        self._last_rank = -1

    def check(self, step: int, row: dict[str, Any]) -> list[Event]:
        if step < self.warmup:
            self.observe_only(step, row)
            return []
        events = self.detect(step, row)
        cooling = self._last_fired is not None and step - self._last_fired <= self.cooldown
        if cooling:  # quiet during cool-down, except an escalation (warning -> critical)
            events = [e for e in events if SEVERITIES.index(e.severity) > self._last_rank]
        if events:
            self._last_fired = step
            self._last_rank = max(SEVERITIES.index(e.severity) for e in events)
        return events

    def observe_only(self, step: int, row: dict[str, Any]) -> None:
        """Update history during warm-up or cool-down without firing."""

    def detect(self, step: int, row: dict[str, Any]) -> list[Event]:  # pragma: no cover - abstract
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def event(self, step: int, severity: str, message: str, **data: Any) -> Event:
        return Event(self.kind, step, severity, message, data)


def _median(values) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


class _Window:
    """The last `size` finite values, with robust statistics."""

    def __init__(self, size: int):
        self.values: deque[float] = deque(maxlen=size)

    def add(self, x: float) -> None:
        if _finite(x):
            self.values.append(x)

    def __len__(self) -> int:
        return len(self.values)

    def median_mad(self) -> tuple[float, float]:
        """(median, 1.4826 x median absolute deviation): a standard deviation estimate that one
        outlier cannot move (Hampel's scale; 1.4826 makes it consistent for a normal)."""
        median = _median(self.values)
        return median, 1.4826 * _median(abs(v - median) for v in self.values)
