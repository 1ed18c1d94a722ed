"""The detector base class and the robust statistics the detectors share."""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from stablelab.monitor.events import SEVERITIES, Event


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


_NUMBERS = (float, int, bool)


def _finite(x: Any) -> bool:
    # the class test first (a detector asks this of ~13 values per step, live and on a log)
    return x.__class__ in _NUMBERS and math.isfinite(x)


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
    """The last `size` finite values, with robust statistics. A sorted copy is kept beside the
    arrival order (an insertion and a removal by bisection per value), so the median costs O(1)
    instead of a sort per step: a detector's window is read on every step of a live run and every
    row of a million-step log."""

    def __init__(self, size: int):
        self.values: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []

    def add(self, x: float) -> None:
        if _finite(x):
            if len(self.values) == self.values.maxlen:
                del self._sorted[bisect.bisect_left(self._sorted, self.values[0])]
            self.values.append(x)
            bisect.insort(self._sorted, x)

    def replace(self, values) -> None:
        """The window holding `values` (oldest first), as after adding them in turn."""
        self.values.clear()
        self._sorted = []
        for x in values:
            self.add(x)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def minimum(self) -> float:
        return self._sorted[0]

    def median(self) -> float:
        ordered, n = self._sorted, len(self._sorted)
        return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])

    def median_mad(self) -> tuple[float, float]:
        """(median, 1.4826 x median absolute deviation): a standard deviation estimate that one
        outlier cannot move (Hampel's scale; 1.4826 makes it consistent for a normal)."""
        median = self.median()
        if len(self._sorted) >= 64:  # numpy's median of the deviations: ~10 us for 256 values
            deviations = np.abs(np.asarray(self._sorted) - median)
            return median, 1.4826 * float(np.median(deviations))
        return median, 1.4826 * _median(abs(v - median) for v in self._sorted)
