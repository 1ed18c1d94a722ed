"""Where the monitor's rows (one per step) and events go.

A sink has `rows(list_of_dicts)`, `events(list_of_Event)` and `close(summary)`. Built in: the run
store (same folder format as the proxy study), the console (rich), TensorBoard, and optional
Weights & Biases and MLflow (imported only when asked for; a clear error if not installed)."""

from __future__ import annotations

import importlib
import math
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


class RunStoreSink(Sink):
    """Writes a run folder: config.json, metrics.jsonl, events.jsonl, then metrics.parquet,
    result.json and `done` on close (stablelab.store.run_store.RunWriter)."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any], fsync_every: int = 200):
        from stablelab.store.run_store import RunWriter

        self.writer = RunWriter(run_dir, config, fsync_every=fsync_every).start()

    def rows(self, rows):
        for row in rows:
            self.writer.log(row)

    def events(self, events):
        for event in events:
            self.writer.event(event.to_dict())

    def close(self, summary):
        from stablelab.io import atomic_write_json

        atomic_write_json(self.writer.run_dir / "incidents.json", summary.get("incidents", []))
        self.writer.finish(summary)


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
    """Scalars per step and events as text, through torch.utils.tensorboard."""

    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

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


class WandbSink(Sink):
    """Logs rows with wandb.log (an active run, or one started with `init_kwargs`)."""

    def __init__(self, module=None, **init_kwargs):
        self.wandb = module or _optional("wandb", "wandb")
        if self.wandb.run is None:
            self.wandb.init(**init_kwargs)

    def rows(self, rows):
        for row in rows:
            self.wandb.log(_numeric(row), step=row["step"])

    def events(self, events):
        for event in events:
            self.wandb.log({f"events/{event.kind}": 1.0}, step=event.step)

    def close(self, summary):
        self.wandb.finish()


class MLflowSink(Sink):
    """Logs rows with mlflow.log_metrics (an active run, or one it starts)."""

    def __init__(self, module=None):
        self.mlflow = module or _optional("mlflow", "mlflow")
        self._started = self.mlflow.active_run() is None
        if self._started:
            self.mlflow.start_run()

    def rows(self, rows):
        for row in rows:
            # MLflow metric names: letters, digits, _ - . / and space only.
            metrics = {k.replace(":", "_"): v for k, v in _numeric(row).items()}
            self.mlflow.log_metrics(metrics, step=row["step"])

    def events(self, events):
        for event in events:
            self.mlflow.log_metric(f"events/{event.kind}", 1.0, step=event.step)

    def close(self, summary):
        if self._started:
            self.mlflow.end_run()


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
