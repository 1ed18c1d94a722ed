"""Lightning's SpikeDetection: a window of losses and a relative tolerance."""

from __future__ import annotations

import math
from collections import deque

from stablelab.bench.anchors.base import AnchorRule, Decision, _bad, _number, _positive_int


class LightningSpikeRule(AnchorRule):
    """Lightning's ``SpikeDetection`` (raises ``TrainingSpikeException``: stop).

    Official code (lightning/fabric/utilities/spike.py; ``lightning.pytorch.callbacks.SpikeDetection``
    wraps it), per batch ``batch_idx``:

    * no check while ``batch_idx < warmup`` (1): batch 0 only feeds the statistics;
    * reference: a running mean (torchmetrics ``Running(MeanMetric, window=10)``) of the last
      ``window`` accepted losses, and ``last_val``, the last accepted loss (0.0 at first);
    * a non-finite loss is a spike when ``finite_only`` (default True);
    * a loss that is no worse than ``last_val`` (mode "min": ``loss - last_val <= 0``; "max": ``>= 0``)
      is never a spike;
    * otherwise it is a spike iff ``|loss - mean| >= |atol|`` (skipped when atol is None) and
      ``|loss - mean| >= |rtol * mean|`` (skipped when rtol is None). With rtol=2 and mode min this
      means ``loss >= 3 * mean``. It is not ``torch.isclose`` (no combined atol + rtol*|b| bound).
    * a spike is not added to the statistics (training stops there); other losses are added,
      except, with ``finite_only=False``, non-finite ones.

    Non-finite: flagged with the default ``finite_only=True`` (after warm-up). A NaN reaching the
    statistics (only possible during warm-up) occupies a window slot but torchmetrics drops it from
    the mean; we do the same. With ``finite_only=False`` a NaN is not a spike, +inf is (mode min).

    Differences: ``batch_idx`` is the count of previous ``update`` calls with a loss (Lightning's
    batch index when called every batch from 0); Lightning computes in float32, we in float64, which
    can only matter for a loss within float32 rounding of the threshold. After a spike Lightning
    stops; we keep going (statistics unchanged), so a benchmark can read later decisions too.
    """

    name = "lightning"
    action = "stop"
    # Lightning-AI/pytorch-lightning src/lightning/fabric/utilities/spike.py (SpikeDetection._is_spike)
    source = "Lightning lightning/fabric/utilities/spike.py: SpikeDetection (window 10, rtol 2.0, warmup 1)"

    def __init__(self, mode: str = "min", window: int = 10, warmup: int = 1, atol: float | None = None,
                 rtol: float | None = 2.0, finite_only: bool = True):
        if mode not in ("min", "max"):
            raise _bad(self.name, f"mode must be 'min' or 'max', got {mode!r}")
        self.mode = mode
        self.window = _positive_int(self.name, "window", window)
        self.warmup = _positive_int(self.name, "warmup", warmup, 0)
        self.atol = _number(self.name, "atol", atol, positive=False, allow_none=True)
        self.rtol = _number(self.name, "rtol", rtol, positive=False, allow_none=True)
        if not isinstance(finite_only, bool):
            raise _bad(self.name, f"finite_only must be true or false, got {finite_only!r}")
        self.finite_only = finite_only
        self._values: deque[float] = deque(maxlen=self.window)
        self._last_val = 0.0
        self._batch_idx = 0

    def _running_mean(self) -> float:
        kept = [v for v in self._values if not math.isnan(v)]  # torchmetrics drops NaN (nan_strategy="warn")
        return sum(kept) / len(kept) if kept else math.nan

    def _is_spike(self, loss: float) -> bool:
        running = self._running_mean()
        diff = loss - self._last_val
        if self.finite_only and not math.isfinite(loss):
            return True
        if (diff <= 0.0) if self.mode == "min" else (diff >= 0.0):
            return False
        atol_ok = self.atol is None or abs(loss - running) >= abs(self.atol)
        rtol_ok = self.rtol is None or abs(loss - running) >= abs(self.rtol * running)
        return atol_ok and rtol_ok

    def update(self, step: int, loss: float | None, grad_norm: float | None) -> Decision:
        if loss is None:
            return Decision(False)
        loss = float(loss)
        idx = self._batch_idx
        self._batch_idx += 1
        running = self._running_mean()
        if idx >= self.warmup and self._is_spike(loss):
            return Decision(True, None, f"step {step}: loss {loss:.6g} vs running mean {running:.6g} "
                                        f"(rtol {self.rtol}, atol {self.atol})", stop=True)
        if self.finite_only or math.isfinite(loss):
            self._values.append(loss)
            self._last_val = loss
        return Decision(False)
