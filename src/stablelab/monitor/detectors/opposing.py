"""The opposing-signals detector (Rosenfeld & Risteski 2023): a few examples whose losses move far
more than the rest and against each other, the precursor of the loss spikes that paper describes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from stablelab.monitor.detectors.base import Detector, _finite


@dataclass
class OpposingSignals(Detector):
    """Reads opposing_signals_correlation, _amplitude and _oscillation (monitor.opposing.
    OpposingSignalTracker); fires when the two most-moving groups' loss changes have cosine <=
    -`opposition` (default 0.8: they move against each other), move `amplitude` times more than
    the average example (default 3) and oscillate: at least a fraction `oscillation` (default 0.5)
    of their consecutive changes flip sign. Without the last condition a steady trade-off (one
    group learned while another is given up, at any LR) would fire; on the planted setting of
    docs/dynamics.md it flips 0 times at lr 0.02 and every time in the oscillating regime at lr 0.5.
    Inert on rows without those keys (a Monitor without `opposing_every`)."""

    kind: ClassVar[str] = "opposing_signals"
    opposition: float = 0.8
    amplitude: float = 3.0
    oscillation: float = 0.5

    def detect(self, step, row):
        r, a = row.get("opposing_signals_correlation"), row.get("opposing_signals_amplitude")
        flips = row.get("opposing_signals_oscillation")
        if not (_finite(r) and _finite(a) and _finite(flips)):
            return []
        if r > -self.opposition or a < self.amplitude or flips < self.oscillation:
            return []
        return [self.event(step, "info",
                           f"two groups of examples move against each other (cosine {r:.2f} <= {-self.opposition:g}) "
                           f"{a:.3g}x more than the average example, flipping direction {flips:.0%} of the time: "
                           "opposing signals (Rosenfeld & Risteski). "
                           "Expect oscillating group losses and, if sharpness is at 2/lr, a loss spike.",
                           correlation=r, amplitude=a, oscillation=flips)]
