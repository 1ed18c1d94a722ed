"""One folder per run (see docs/design.md, "Store"):

    config.json      the run's full configuration (written first)
    attempt          a token naming the process that owns the folder right now
    metrics.jsonl    one row per logged step, line-buffered, fsync at checkpoints and at the end
    events.jsonl     one row per event (detections and interventions)
    metrics.parquet  written on completion, to a temporary name then renamed; only where pyarrow
                     (the `studies` extra) is installed, and readers fall back to metrics.jsonl
    result.json      the run's outcome (final loss, diverged, ...), written atomically
    done             written last: its presence is what "finished" means

A killed run loses at most its unflushed tail; a torn last JSONL line is ignored on read.
pyarrow is imported only where Parquet is written or read, so the Monitor's run-store sink works on
a plain `pip install stablelab`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from stablelab.io import atomic_write_bytes, atomic_write_json, naming_failed_writes, read_json, to_jsonable

if TYPE_CHECKING:
    import pyarrow as pa

CONFIG, ATTEMPT, METRICS, EVENTS, PARQUET, RESULT, DONE = (
    "config.json", "attempt", "metrics.jsonl", "events.jsonl", "metrics.parquet", "result.json", "done",
)


class RunTakenOver(RuntimeError):
    """Another process started this run again: this one must stop writing."""


def is_done(run_dir: str | Path) -> bool:
    return (Path(run_dir) / DONE).exists()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn (partially written) last line is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # the last line may be torn by a kill
                break
            raise
    return rows


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows with possibly different keys -> one table (missing values are null). Needs pyarrow."""
    import pyarrow as pa

    columns: dict[str, None] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, None)
    data = {key: [row.get(key) for row in rows] for key in columns}
    arrays = {}
    for key, values in data.items():
        if all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            kind = pa.int64() if all(v is None or isinstance(v, int) for v in values) else pa.float64()
            arrays[key] = pa.array([None if v is None else v for v in values], type=kind)
        else:
            arrays[key] = pa.array(values)
    return pa.table(arrays)


class RunWriter:
    """Writes one run's folder. Use as a context manager or call `start` / `finish` / `close`."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any], fsync_every: int = 50):
        self.run_dir = Path(run_dir)
        self.config = config
        self.fsync_every = fsync_every
        self.token = uuid.uuid4().hex
        self._metrics = None
        self._events = None
        self._since_sync = 0

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "RunWriter":
        """Start (or restart from scratch) the run: anything of an unfinished attempt is removed."""
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        atomic_write_bytes(self.run_dir / ATTEMPT, self.token.encode())
        atomic_write_json(self.run_dir / CONFIG, self.config)
        self._metrics = open(self.run_dir / METRICS, "a", encoding="utf-8", buffering=1)
        self._events = open(self.run_dir / EVENTS, "a", encoding="utf-8", buffering=1)
        return self

    def __enter__(self) -> "RunWriter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for handle in (self._metrics, self._events):
            if handle is not None and not handle.closed:
                with naming_failed_writes(handle.name):
                    try:
                        handle.flush()
                        os.fsync(handle.fileno())
                    finally:
                        try:
                            handle.close()
                        except OSError:  # a flush that failed fails again at close: the first error says it
                            pass

    # -- writing ----------------------------------------------------------------------------
    def check_owner(self) -> None:
        """Raise if another attempt of this run has taken the folder over (e.g. after a resume)."""
        try:
            current = (self.run_dir / ATTEMPT).read_text()
        except FileNotFoundError:
            current = ""
        if current != self.token:
            raise RunTakenOver(f"{self.run_dir} was restarted by another process")

    def log(self, row: dict[str, Any]) -> None:
        with naming_failed_writes(self._metrics.name):  # a full disk names the run's file
            self._metrics.write(json.dumps(to_jsonable(row), allow_nan=False) + "\n")
        self._since_sync += 1
        if self._since_sync >= self.fsync_every:
            self.checkpoint()

    def event(self, row: dict[str, Any]) -> None:
        with naming_failed_writes(self._events.name):
            self._events.write(json.dumps(to_jsonable(row), allow_nan=False) + "\n")

    def checkpoint(self) -> None:
        for handle in (self._metrics, self._events):
            with naming_failed_writes(handle.name):
                handle.flush()
                os.fsync(handle.fileno())
        self._since_sync = 0

    def finish(self, result: dict[str, Any]) -> None:
        """Seal the run: Parquet, then result.json, then the `done` marker (each atomic). Without
        pyarrow (a plain `pip install stablelab`) the Parquet is skipped: metrics.jsonl stays the
        metrics, and `load_metrics` reads it when there is no Parquet."""
        self.check_owner()
        self.close()
        try:
            import pyarrow.parquet as pq
        except ModuleNotFoundError:
            pq = None
        if pq is not None:
            table = rows_to_table(read_jsonl(self.run_dir / METRICS))
            tmp = self.run_dir / f".{PARQUET}.{self.token}.tmp"
            try:
                with naming_failed_writes(tmp):
                    pq.write_table(table, tmp)
                    os.replace(tmp, self.run_dir / PARQUET)
            finally:
                if tmp.exists():
                    tmp.unlink()
        atomic_write_json(self.run_dir / RESULT, result)
        atomic_write_bytes(self.run_dir / DONE, b"")


# -- reading --------------------------------------------------------------------------------
def load_result(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / RESULT)


def load_config(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / CONFIG)


def load_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Metrics rows: from Parquet when the run is finished, else (or without pyarrow) from the JSONL,
    which holds the same rows."""
    run_dir = Path(run_dir)
    if (run_dir / PARQUET).exists():
        try:
            import pyarrow.parquet as pq
        except ModuleNotFoundError:
            return read_jsonl(run_dir / METRICS)
        return pq.read_table(run_dir / PARQUET).to_pylist()
    return read_jsonl(run_dir / METRICS)


def load_events(run_dir: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / EVENTS)


def finished_runs(root: str | Path) -> Iterable[Path]:
    root = Path(root)
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and is_done(p))
