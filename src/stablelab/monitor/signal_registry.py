"""The monitor's signals, one unit each (after cockpit's quantities: a name, a schedule, the code that
measures, the columns it writes), and the typed record of one observed step.

A `Signal` says
- `schedule`: when it is measured: "every_step" (from the gradients, before the optimizer steps),
  "sampled" (every `sync_every`-th step: forward hooks and the costlier gradient reads),
  "after_update" (in the optimizer's step hook) or "scheduled" (a check on a batch of its own,
  measured by monitor.scheduled, which puts its numbers in the record's `host`);
- `measure(measurer, record)`: the device-side value (a tensor, a list of floats or None), computed
  by a `stablelab.signals` function; None in the registry for signals whose values arrive by
  another path (the step numbers, hooks, the step hook, scheduled checks);
- `to_row(read, record, measurer)`: the step's read-back values (signal name -> floats) -> this
  signal's columns, all of them declared in `columns`.

The store's columns (`COLUMNS`, `describe_column`, the run page's titles, the proxy study's SQL) are
derived from the registered signals. Add a signal: one `register_signal(Signal(...))` (docs/design.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from stablelab.errors import UsageError

FAMILY_ENDINGS = ("/", "_l", "_")
SCHEDULES = ("every_step", "sampled", "after_update", "scheduled")


@dataclass(frozen=True)
class Column:
    """One column of the per-step rows; a name ending in `/`, `_l` or `_` is a family: one column per
    tensor, per layer or per key (`grad_norm/<param>`, `attn_logit_max_l<layer>`, `sharpness_<key>`)."""

    name: str
    description: str
    sampled: bool = False
    log_scale: bool = False


@dataclass
class StepRecord:
    """One observed step on its way from the device to a row: `values` holds each measured signal's
    device value by signal name until the window's one read-back; `host` the numbers already on the
    host (this step's fast numbers when a detector read them at once; scheduled checks)."""

    step: int
    lr: float
    has_loss: bool
    sampled: bool
    values: dict[str, Any] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)  # detector kinds already run on this step
    device_skip: bool = False  # the device-side skip may have zeroed this step's gradients

    @property
    def fast(self) -> Any:
        """The step numbers (monitor.step_numbers.FAST): a device vector or host floats."""
        return self.values["step_numbers"]

    @property
    def norms(self) -> torch.Tensor:
        """Per-tensor gradient norms, in the optimizer's parameter order."""
        return self.values["gradient_norms"]


Measure = Callable[[Any, StepRecord], Any]
ToRow = Callable[[dict[str, list[float]], StepRecord, Any], dict[str, Any]]


@dataclass(frozen=True)
class Signal:
    name: str
    schedule: str
    columns: tuple[Column, ...]
    to_row: ToRow | None = None
    measure: Measure | None = None
    source: str = ""  # the paper or practice it comes from


SIGNALS: dict[str, Signal] = {}

# columns of the record itself and of the guard, not of a signal
RECORD_COLUMNS = (
    Column("step", "optimizer step (0-based)"),
    Column("lr", "largest learning rate over param groups, as applied (after lr_backoff)"),
    Column("skipped", "1 if the guard skipped this optimizer step"),
)


def register_signal(signal: Signal) -> Signal:
    """Add a signal (its name must be new, its columns unused by any other signal)."""
    if signal.schedule not in SCHEDULES:
        raise UsageError(f"signal {signal.name!r}: schedule must be one of {SCHEDULES}, got {signal.schedule!r}")
    if signal.name in SIGNALS:
        raise UsageError(f"a signal named {signal.name!r} is already registered")
    taken = {c.name for c in columns()}
    clash = [c.name for c in signal.columns if c.name in taken]
    if clash:
        raise UsageError(f"signal {signal.name!r}: column(s) {clash} already belong to another signal")
    SIGNALS[signal.name] = signal
    return signal


def signals_for(schedule: str) -> list[Signal]:
    return [s for s in SIGNALS.values() if s.schedule == schedule]


def columns() -> tuple[Column, ...]:
    """Every column a row can hold: the record's, then each signal's in registration order."""
    return RECORD_COLUMNS + tuple(c for s in SIGNALS.values() for c in s.columns)


def column(name: str) -> Column:
    """The column of that exact name (KeyError if no signal declares it)."""
    for c in columns():
        if c.name == name:
            return c
    raise KeyError(f"no signal declares a column {name!r}")


def layer_column(family: str, layer: int) -> str:
    """The per-layer column of a family, e.g. layer_column("attn_logit_max_l", 0)."""
    if not family.endswith("_l") or family not in {c.name for c in columns()}:
        raise KeyError(f"{family!r} is not a per-layer column family")
    return f"{family}{layer}"


def describe_column(name: str) -> str:
    """The description of a column (families matched by prefix); '' for an unknown name."""
    every = columns()
    for c in every:
        if c.name == name:
            return c.description
    for c in every:
        if c.name.endswith(FAMILY_ENDINGS) and name.startswith(c.name):
            return c.description
    return ""


def row_of(record: StepRecord, read: dict[str, list[float]], measurer: Any) -> dict[str, Any]:
    """One step's row: the record's columns, then every signal with values, in registry order (the
    host numbers a detector already read take their place)."""
    row: dict[str, Any] = {"step": record.step, "lr": record.lr}
    for signal in SIGNALS.values():
        if signal.name in read and signal.to_row is not None:
            row.update(signal.to_row(read, record, measurer))
    row.update(record.host)
    return row
