"""The Monitor's scheduled checks: measurements that run every N steps on a batch of their own, not
the training batch, and add their keys to that step's row.

- sharpness (every `sharpness_every` steps, before step `sharpness_until` if given): lambda_max and
  trace against 2/lr, preconditioned under Adam (`signals.curvature.sharpness_check`, called with
  `sharpness_options`), read by the `edge_of_stability` detector; Gilmer et al. 2022 look at the
  first steps of warm-up.
- opposing signals (every `opposing_every` steps): per-example losses of a fixed probe batch through
  `monitor.opposing.OpposingSignalTracker`, read by the `opposing_signals` detector."""

from __future__ import annotations

from stablelab.monitor.opposing import OpposingSignalTracker, probe_losses
from stablelab.monitor.settings import OpposingCheck, SharpnessCheck
from stablelab.monitor.signal_registry import StepRecord


class ScheduledChecks:
    """The two slots (their settings checked in monitor.settings); `run(step, record)` is called
    once per observed step and adds the checks' numbers to the record's host values."""

    def __init__(self, model, measurer, sharpness: SharpnessCheck, opposing: OpposingCheck):
        self.measurer, self.sharpness = measurer, sharpness
        self.sharpness_every, self.opposing_every = sharpness.every, opposing.every
        self.opposing = None
        if opposing.every:
            probe = probe_losses(model, opposing.batch, opposing.loss)
            self.opposing = OpposingSignalTracker(probe, n_examples=len(probe()))

    def run(self, t: int, record: StepRecord) -> None:
        check = self.sharpness
        in_window = check.until is None or t < check.until
        if check.every and t > 0 and t % check.every == 0 and in_window:
            self.measurer.measure_sharpness(record, check.loss_fn, check.batch, check.options)
        if self.opposing is not None and t % self.opposing_every == 0:
            record.host.update(self.opposing.observe(t) or {})
