"""Where the monitor's rows (one per step) and events go.

A sink has `rows(list_of_dicts)`, `events(list_of_Event)`, `incidents(opened, closed)` and
`close(summary)`. Built in: the log folder (stablelab.monitor.log_folder.LogFolder), the console
(rich), TensorBoard, and optional Weights & Biases and MLflow (imported only when asked for; a
clear error if not installed), which write every key under `stablelab/`."""

from __future__ import annotations

import importlib
import math
import re
import time
from pathlib import Path
from typing import Any, Sequence

from stablelab.errors import UsageError
from stablelab.monitor.events import Event


class Sink:
    def rows(self, rows: Sequence[dict[str, Any]]) -> None:
        pass

    def events(self, events: Sequence[Event]) -> None:
        pass

    def incidents(self, opened: Sequence[Any], closed: Sequence[Any]) -> None:
        """Incidents (stablelab.monitor.incidents.Incident) that opened or closed since the last call."""

    def close(self, summary: dict[str, Any]) -> None:
        pass


class ConsoleSink(Sink):
    """Prints incidents (not rows, not every raw event) with rich, coloured by severity, to stderr:
    one line when an incident opens (its first event's diagnosis), one when it closes."""

    STYLES = {"info": "cyan", "warning": "yellow", "critical": "bold red"}

    def __init__(self, min_severity: str = "info"):
        from rich.console import Console

        from stablelab.monitor.events import SEVERITIES

        self.console = Console(stderr=True)
        self.min_rank = SEVERITIES.index(min_severity)
        self._ranks = {s: i for i, s in enumerate(SEVERITIES)}

    def incidents(self, opened, closed):
        for incident, moment in [(i, "opened") for i in opened] + [(i, "closed") for i in closed]:
            if self._ranks[incident.severity] < self.min_rank:
                continue
            style = self.STYLES[incident.severity]
            if moment == "opened":
                first = incident.events[0] if incident.events else None
                caused = f" (after {incident.cause})" if incident.cause else ""
                acted = sorted({a.kind for a in incident.actions})
                text = (first.message if first else "") + (f" [guard: {', '.join(acted)}]" if acted else "")
                self.console.print(f"[{style}]stablelab monitor[/] step {incident.start} incident opened: "
                                   f"[{style}]{incident.kind}[/]{caused}: {text}", highlight=False)
            else:
                self.console.print(f"[{style}]stablelab monitor[/] incident closed: {incident.summary()}",
                                   highlight=False)


def _numeric(row: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in row.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class TensorBoardSink(Sink):
    """Scalars per step (tag = the row's column: `loss`, `grad_norm`, `grad_norm/NAME`, ...) and
    events as text (`events/<kind>`), through torch.utils.tensorboard; the event file is flushed
    every `flush_secs` and at close."""

    def __init__(self, log_dir: str | Path, flush_secs: int = 30):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), flush_secs=flush_secs)

    def rows(self, rows):
        for row in rows:
            for key, value in _numeric(row).items():
                self.writer.add_scalar(key, value, row["step"])

    def events(self, events):
        for event in events:
            self.writer.add_text(f"events/{event.kind}", f"{event.severity}: {event.message}", event.step)

    def close(self, summary):
        self.writer.flush()
        self.writer.close()


def _optional(module_name: str, extra: str):
    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise UsageError(f"the {module_name} sink needs the {module_name!r} package: "
                         f"pip install 'stablelab[{extra}]'") from None


PREFIX = "stablelab/"  # every key the W&B and MLflow sinks write, so none collides with the user's
STEP = PREFIX + "step"


def _event_counts(events: Sequence[Event]) -> dict[int, dict[str, float]]:
    """step -> {"stablelab/events/<kind>": number of events of that kind at that step}."""
    by_step: dict[int, dict[str, float]] = {}
    for event in events:
        counts = by_step.setdefault(event.step, {})
        key = f"{PREFIX}events/{event.kind}"
        counts[key] = counts.get(key, 0.0) + 1.0
    return by_step


class WandbSink(Sink):
    """Weights & Biases, on the monitor's own step axis, every key under `stablelab/`.

    Rows go to `stablelab/<column>`, events to `stablelab/events/<kind>` (their count at that
    step), each logged with `stablelab/step`, which `define_metric` makes the x-axis of
    `stablelab/*`. No `step=` is passed: W&B drops data logged at a step below its current one,
    and events arrive after rows of later steps. A critical incident raises one `alert` (level
    ERROR) when it opens (or when it closes, if it only became critical later). The run is the
    active one, or one started with `init_kwargs`; only a run the sink started is finished at close."""

    def __init__(self, module=None, **init_kwargs):
        self.wandb = module or _optional("wandb", "wandb")
        self.started = self.wandb.run is None
        self.run = self.wandb.init(**init_kwargs) if self.started else self.wandb.run
        self.run.define_metric(STEP)
        self.run.define_metric(PREFIX + "*", step_metric=STEP)
        self._alerted: set[tuple[str, int]] = set()

    def rows(self, rows):
        for row in rows:
            self.run.log({STEP: row["step"], **{PREFIX + k: v for k, v in _numeric(row).items()}})

    def events(self, events):
        for step, counts in _event_counts(events).items():
            self.run.log({STEP: step, **counts})

    def incidents(self, opened, closed):
        for incident in [*opened, *closed]:
            if incident.severity != "critical" or (incident.kind, incident.start) in self._alerted:
                continue
            self._alerted.add((incident.kind, incident.start))
            first = incident.events[0].message if incident.events else ""
            self.run.alert(title=f"stablelab: {incident.kind} at step {incident.start}",
                           text=f"{incident.summary()}\n{first}".strip(),
                           level=self.wandb.AlertLevel.ERROR)

    def close(self, summary):
        if self.started:
            self.run.finish()


_MLFLOW_BAD = re.compile(r"[^A-Za-z0-9_\-./ ]")


def _mlflow_name(key: str) -> str:
    """A metric name MLflow accepts on every platform (alphanumerics, _ - . / and space) and that
    names one path (no empty, "." or ".." part)."""
    parts = _MLFLOW_BAD.sub("_", key).split("/")
    return "/".join(part for part in parts if part not in ("", ".", ".."))


class MLflowSink(Sink):
    """MLflow: rows as `stablelab/<column>` with a per-tensor column's own "/" made "."
    (`stablelab/grad_norm.NAME`: the file store keeps a metric in a file at its name's path, so
    `stablelab/grad_norm` cannot also be a folder), events as `stablelab/events/<kind>` (their
    count at that step), at the monitor's step, one `log_batch` per call. The run is the active
    one, or one started with `start_kwargs` and ended at close (only a run the sink started)."""

    def __init__(self, module=None, **start_kwargs):
        self.mlflow = module or _optional("mlflow", "mlflow")
        active = self.mlflow.active_run()
        self.started = active is None
        self.run_id = (self.mlflow.start_run(**start_kwargs) if self.started else active).info.run_id
        self.client = self.mlflow.tracking.MlflowClient()
        self._names: dict[str, str] = {}

    def _name(self, column: str) -> str:
        name = self._names.get(column)
        if name is None:
            name = self._names[column] = _mlflow_name(PREFIX + column.replace("/", "."))
        return name

    def _log(self, items: list[tuple[str, float, int]]) -> None:
        if items:
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[self.mlflow.entities.Metric(name, value, now, step)
                                                        for name, value, step in items])

    def rows(self, rows):
        self._log([(self._name(k), v, row["step"]) for row in rows for k, v in _numeric(row).items()])

    def events(self, events):
        self._log([(_mlflow_name(k), n, step) for step, counts in _event_counts(events).items()
                   for k, n in counts.items()])

    def close(self, summary):
        if not self.started:
            return
        active = self.mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            self.mlflow.end_run()
        else:  # the user's code has moved the fluent API on to another run
            self.client.set_terminated(self.run_id)


def _tensorboard(log_dir: str | Path | None) -> Sink:
    if log_dir is None:
        raise UsageError("the tensorboard sink needs log_dir (or pass TensorBoardSink(path))")
    return TensorBoardSink(Path(log_dir) / "tensorboard")


# name -> factory(log_dir): the sinks a Monitor can be given by name (the run store is added when
# log_dir is given)
SINKS = {"console": lambda log_dir: ConsoleSink(), "tensorboard": _tensorboard,
         "wandb": lambda log_dir: WandbSink(), "mlflow": lambda log_dir: MLflowSink()}


def make_sink(name: str, log_dir: str | Path | None) -> Sink:
    """Build a sink from its name ("console", "tensorboard", "wandb", "mlflow")."""
    if name not in SINKS:
        raise UsageError(f"unknown sink {name!r}; available: {', '.join(SINKS)} "
                         "(the run store is used when log_dir is given)")
    return SINKS[name](log_dir)
