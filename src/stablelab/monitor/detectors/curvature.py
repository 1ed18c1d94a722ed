"""The curvature detector: sharpness at the edge of stability."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from stablelab.monitor.detectors.base import Detector, _finite


@dataclass
class EdgeOfStability(Detector):
    """Scheduled sharpness check (stablelab.signals.curvature.sharpness_check): fires when the
    sharpness reaches `factor` x its stability threshold: lambda_max against 2/lr for gradient
    descent (Cohen et al. 2021), the preconditioned lambda_max against (2 + 2 beta1) / ((1 - beta1) lr)
    = 38/lr under Adam (Cohen et al. 2022). Default 0.9, the curvature signal's own edge margin."""

    kind: ClassVar[str] = "edge_of_stability"
    factor: float = 0.9

    def detect(self, step, row):
        if _finite(row.get("sharpness_adam_ratio")):
            ratio, what = row["sharpness_adam_ratio"], "preconditioned sharpness / (38/lr at beta1 0.9)"
            lam, threshold = row.get("sharpness_preconditioned_lambda_max"), row.get("sharpness_adam_threshold")
        else:
            lam, threshold = row.get("sharpness_lambda_max"), row.get("sharpness_gd_threshold")
            if not (_finite(lam) and _finite(threshold)) or threshold <= 0:
                return []
            ratio, what = lam / threshold, "lambda_max / (2/lr)"
        if ratio < self.factor:
            return []
        return [self.event(step, "warning",
                           f"{what} = {ratio:.3g} >= {self.factor:g} (lambda {lam:.4g}, threshold "
                           f"{threshold:.4g}): training is at the edge of stability. Likely fix: lower the "
                           "learning rate if the loss oscillates; otherwise expected (Cohen et al.).",
                           ratio=ratio, lambda_max=lam, threshold=threshold, trace=row.get("sharpness_trace"))]
