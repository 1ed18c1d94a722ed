"""The anchor rule interface (update -> Decision) and the argument checks the rules share."""

from __future__ import annotations

import inspect
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from stablelab.errors import UsageError


@dataclass
class Decision:
    """What a rule says about one step."""

    flagged: bool  # the rule fires at this step
    clip_to: float | None = None  # clipping rules: the grad norm to clip to (None: no clip)
    reason: str = ""
    stop: bool = False  # the trainer ends the run here (a fatal check, a raised exception)



class AnchorRule:
    """Base class: one production spike rule, fed one step at a time."""

    name: ClassVar[str] = ""
    action: ClassVar[str | None] = None  # "skip", "clip", "stop" or None (log only)
    source: ClassVar[str] = ""
    # the trainer's own global-norm clipping in its production configurations (None: none), applied
    # with torch.nn.utils.clip_grad_norm_ after the rule has seen the pre-clip norm
    production_clip: ClassVar[float | None] = None
    # where the benchmark simplifies the rule as it runs in production (docs/monitor.md repeats it)
    idealised: ClassVar[str] = ""

    def update(self, step: int, loss: float | None, grad_norm: float | None) -> Decision:
        raise NotImplementedError

    @property
    def settings(self) -> dict[str, Any]:
        """The constructor settings of this rule (for reports)."""
        return {k: getattr(self, k) for k in inspect.signature(type(self).__init__).parameters if k != "self"}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"{type(self).__name__}({args})"



def _f(x: float | None) -> float | None:
    return None if x is None else float(x)



def _bad(anchor: str, what: str) -> UsageError:
    return UsageError(f"anchor {anchor!r}: {what}")



def _positive_int(anchor: str, key: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(anchor, f"{key} must be an integer >= {minimum}, got {value!r}")
    return value



def _number(anchor: str, key: str, value: Any, *, positive: bool = True, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(anchor, f"{key} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise _bad(anchor, f"{key} must be > 0, got {value!r}")
    return float(value)



def _std_mean(values: deque[float] | list[float]) -> tuple[float, float]:
    """torch.std_mean's default: Bessel-corrected (n-1) standard deviation, and the mean."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return math.nan, mean
    d2 = 0.0
    for v in values:
        d = v - mean
        d2 += d * d  # d*d, not d**2: float ** raises OverflowError on huge values
    return (d2 / (n - 1)) ** 0.5, mean
