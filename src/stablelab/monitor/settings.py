"""The Monitor's settings as one dataclass (after OLMo-core's stability callback: a field and a line
of doc for each). `Monitor(model, optimizer, settings=MonitorSettings(...))` and the keyword form
`Monitor(model, optimizer, sync_every=5, sharpness_every=100, ...)` are the same thing: the keywords
are the fields, and `sharpness_*` / `opposing_*` fill the two scheduled checks."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Sequence

import torch

from stablelab.errors import UsageError


def _count(name: str, value: Any, least: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise UsageError(f"{name} must be an integer >= {least}, got {value!r}")
    return value


@dataclass
class SharpnessCheck:
    """The scheduled edge-of-stability check (monitor.scheduled, signals.curvature.sharpness_check)."""

    every: int = 0                      # steps between checks (0: off)
    loss_fn: Callable | None = None     # (model, batch) -> loss, on a batch of its own
    batch: Any = None                   # the batch, or a function returning one
    until: int | None = None            # only before this step (warm-up: Gilmer et al. 2022)
    options: dict[str, Any] | None = None  # keyword arguments of sharpness_check (tol, trace_products, ...)

    def __post_init__(self):
        _count("sharpness_every", self.every)
        if self.until is not None:
            _count("sharpness_until", self.until)
        if self.every and (self.loss_fn is None or self.batch is None):
            raise UsageError("sharpness_every needs sharpness_loss_fn and sharpness_batch")
        if self.options is not None and not isinstance(self.options, dict):
            raise UsageError(f"sharpness_options must be a dict of sharpness_check arguments, got {self.options!r}")


@dataclass
class OpposingCheck:
    """The opposing-signals check (Rosenfeld & Risteski 2023): per-example losses of a fixed probe batch."""

    every: int = 0                      # steps between checks (0: off)
    batch: Any = None                   # (inputs, targets) of a fixed probe set
    loss: str | Callable = "cross_entropy"  # "cross_entropy", "mse" or (outputs, targets) -> per-example losses

    def __post_init__(self):
        _count("opposing_every", self.every)
        if self.every and self.batch is None:
            raise UsageError("opposing_every needs opposing_batch (inputs, targets) of a fixed probe set")
        if not (callable(self.loss) or self.loss in ("cross_entropy", "mse")):
            raise UsageError(f"opposing_loss must be 'cross_entropy', 'mse' or a function, got {self.loss!r}")


@dataclass
class MonitorSettings:
    """Everything a Monitor can be told, besides the model, optimizer, log_dir and policy."""

    sync_every: int = 10                 # steps between host reads (and between sampled steps)
    detectors: dict[str, Any] | None = None  # per-kind detector setting overrides, or False to switch one off
    # instead of raw thresholds, the false-warning rate per healthy step accepted, in (0, 1): thresholds
    # read off the calibration curves of `stablelab detect-bench` (monitor.calibration)
    target_false_alarm_rate: float | None = None
    sinks: Sequence[Any] = ("console",)  # "console", "tensorboard", "wandb", "mlflow" or Sink objects
    # the module whose output is the logits (default: the last nn.Linear; False: no output-logit signals)
    logits_module: str | bool | None = None
    # "auto" (the loss's autograd graph, else the output head), "classification" or "regression"
    task: str = "auto"
    loss_dtype: torch.dtype | None = None  # the loss's dtype for softmax collapse (default: from autocast)
    attention: bool = True               # hook attention modules for the max attention logit per layer
    # rows a sampled step's attention and output-logit signals read (0: all): the query positions of
    # the first sequences and an evenly strided sample of the logits' rows, so the cost is flat in batch size
    signal_rows: int = 256
    update_ratio_every: int = 1          # measure the update-to-weight ratio every N steps (0: never)
    update_sample: int = 4096            # elements per weight matrix the update ratio is estimated from
    elementwise_spikes: bool = False     # also record SPAM's element-wise spike fraction on sampled steps
    outlier_factor: float = 50.0         # the skip rule: global gradient norm above this x its typical value
    outlier_warmup: int = 20             # ... after this many steps
    # suspect steps in a row (monitor.step_numbers.TrustRule) after which a new gradient level is accepted
    outlier_patience: int = 16
    incident_gap: int = 50               # steps without an event after which an incident closes
    grad_scaler: Any = None              # the run's torch.amp.GradScaler: its overflow steps are info events
    sharpness: SharpnessCheck = field(default_factory=SharpnessCheck)  # keywords sharpness_every, _loss_fn, ...
    opposing: OpposingCheck = field(default_factory=OpposingCheck)  # keywords opposing_every, _batch, _loss
    config: dict[str, Any] | None = None  # extra fields recorded in the run's config.json
    # the number of the first observed step (default: where load_state_dict() or the continued
    # log_dir left off, else 0)
    start_step: int | None = None
    all_ranks: bool = False              # under torch.distributed, every rank writes (LOG_DIR-rank{r}) and prints
    on_stop: str = "raise"               # "raise" TrainingStopped, or "flag": `stop_requested` for trainers

    def __post_init__(self):
        _count("sync_every", self.sync_every, least=1)
        _count("update_ratio_every", self.update_ratio_every)
        _count("update_sample", self.update_sample)
        _count("outlier_warmup", self.outlier_warmup)
        _count("outlier_patience", self.outlier_patience, least=1)
        _count("incident_gap", self.incident_gap)
        if self.start_step is not None:
            _count("start_step", self.start_step)
        if self.on_stop not in ("raise", "flag"):
            raise UsageError(f"on_stop must be 'raise' or 'flag', got {self.on_stop!r}")

    @classmethod
    def from_keywords(cls, settings: "MonitorSettings | None" = None, **keywords: Any) -> "MonitorSettings":
        """Settings from Monitor's keyword arguments, on top of `settings` if given:
        sharpness_every= sets sharpness.every, opposing_batch= sets opposing.batch, and so on."""
        base = settings if settings is not None else cls()
        if not isinstance(base, cls):
            raise UsageError(f"settings must be a MonitorSettings, got {type(base).__name__}")
        own = {f.name for f in fields(cls)}
        checks = {"sharpness": {f.name for f in fields(SharpnessCheck)}, "opposing": {f.name for f in fields(OpposingCheck)}}
        flat: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {"sharpness": {}, "opposing": {}}
        for name, value in keywords.items():
            prefix, _, rest = name.partition("_")
            if prefix in checks and rest in checks[prefix]:
                nested[prefix][rest] = value
            elif name in own:
                flat[name] = value
            else:
                raise TypeError(f"Monitor() got an unexpected keyword argument {name!r}")
        for check, values in nested.items():
            if values:
                flat[check] = replace(flat.get(check, getattr(base, check)), **values)
        return replace(base, **flat) if flat else base
