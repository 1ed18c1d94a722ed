"""The opposing-signals detector (Rosenfeld & Risteski 2023): a few examples whose losses move far
more than the rest and against each other, the precursor of the loss spikes that paper describes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from stablelab.monitor.detectors.base import Detector, _finite


@dataclass
class OpposingSignals(Detector):
    """Reads opposing_signals_correlation and opposing_signals_amplitude (monitor.opposing.
    OpposingSignalTracker); fires when the two most-moving groups' loss changes have cosine <=
    -`opposition` (default 0.8: they move against each other) and move `amplitude` times more than
    the average example (default 3). Inert on rows without those keys, so a default Monitor never
    fires it."""

    kind: ClassVar[str] = "opposing_signals"
    opposition: float = 0.8
    amplitude: float = 3.0

    def detect(self, step, row):
        r, a = row.get("opposing_signals_correlation"), row.get("opposing_signals_amplitude")
        if not (_finite(r) and _finite(a)):
            return []
        if r > -self.opposition or a < self.amplitude:
            return []
        return [self.event(step, "info",
                           f"two groups of examples move against each other (cosine {r:.2f} <= {-self.opposition:g}) "
                           f"and {a:.3g}x more than the average example: opposing signals (Rosenfeld & Risteski). "
                           "Expect oscillating group losses and, if sharpness is at 2/lr, a loss spike.",
                           correlation=r, amplitude=a)]
