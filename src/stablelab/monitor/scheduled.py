"""The Monitor's scheduled checks: measurements that run every N steps on a batch of their own, not
the training batch, and add their keys to that step's row.

- sharpness (every `sharpness_every` steps, before step `sharpness_until` if given): lambda_max and
  trace against 2/lr, preconditioned under Adam (`signals.curvature.sharpness_check`, called with
  `sharpness_options`), read by the `edge_of_stability` detector; Gilmer et al. 2022 look at the
  first steps of warm-up.
- opposing signals (every `opposing_every` steps): per-example losses of a fixed probe batch through
  `monitor.opposing.OpposingSignalTracker`, read by the `opposing_signals` detector."""

from __future__ import annotations

from typing import Any, Callable

from stablelab.errors import UsageError
from stablelab.monitor.opposing import OpposingSignalTracker, probe_losses


def _count(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UsageError(f"{name} must be an integer >= 0, got {value!r}")
    return value


class ScheduledChecks:
    """The two slots; `run(step, entry)` is called once per observed step."""

    def __init__(self, model, measurer, *, sharpness_every: int = 0, sharpness_loss_fn: Callable | None = None,
                 sharpness_batch: Any = None, sharpness_until: int | None = None,
                 sharpness_options: dict[str, Any] | None = None, opposing_every: int = 0,
                 opposing_batch: Any = None, opposing_loss: str | Callable = "cross_entropy"):
        self.sharpness_every = _count("sharpness_every", sharpness_every)
        self.sharpness_until = None if sharpness_until is None else _count("sharpness_until", sharpness_until)
        if sharpness_every and (sharpness_loss_fn is None or sharpness_batch is None):
            raise UsageError("sharpness_every needs sharpness_loss_fn and sharpness_batch")
        self.opposing_every = _count("opposing_every", opposing_every)
        if opposing_every and opposing_batch is None:
            raise UsageError("opposing_every needs opposing_batch (inputs, targets) of a fixed probe set")
        if not (callable(opposing_loss) or opposing_loss in ("cross_entropy", "mse")):
            raise UsageError(f"opposing_loss must be 'cross_entropy', 'mse' or a function, got {opposing_loss!r}")
        self.measurer = measurer
        self.sharpness_loss_fn, self.sharpness_batch = sharpness_loss_fn, sharpness_batch
        if sharpness_options is not None and not isinstance(sharpness_options, dict):
            raise UsageError(f"sharpness_options must be a dict of sharpness_check arguments, "
                             f"got {sharpness_options!r}")
        self.sharpness_options = sharpness_options
        self.opposing = None
        if opposing_every:
            probe = probe_losses(model, opposing_batch, opposing_loss)
            self.opposing = OpposingSignalTracker(probe, n_examples=len(probe()))

    def run(self, t: int, entry: dict[str, Any]) -> None:
        in_window = self.sharpness_until is None or t < self.sharpness_until
        if self.sharpness_every and t > 0 and t % self.sharpness_every == 0 and in_window:
            self.measurer.measure_sharpness(entry, self.sharpness_loss_fn, self.sharpness_batch,
                                            self.sharpness_options)
        if self.opposing is not None and t % self.opposing_every == 0:
            entry["host"].update(self.opposing.observe(t) or {})
