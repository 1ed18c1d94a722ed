"""The monitor's log folder: `log_dir` belongs to the user, so the monitor never removes a file it
did not write, and a restarted run continues the folder instead of starting it again.

    sessions.jsonl   one line per session (process) that wrote here: its number, first step, time;
                     its presence is what marks a folder as a monitor's
    config.json      the latest session's configuration
    metrics.jsonl    one row per step, each with its `session`; appended, never rewritten
    events.jsonl     one row per event, each with its `session`; appended
    incidents.json   every session's incidents (a continued incident counted once), at close
    metrics.parquet  at close: one row per step, the latest session's where a resumed run went
                     over steps again (needs pyarrow; the JSONL always holds every row)
    result.json      the last session's summary, at close
    done             written last at close

A folder is opened in one of three ways: it does not exist or is empty (a new run), it holds a
monitor's `sessions.jsonl` (continued: the next session is appended), or it holds anything else
(refused with one line: the monitor will not mix its files with the user's). Continuing only
removes the previous session's `done` marker; `metrics.parquet` and `result.json` are rewritten
(temporary name, then rename) at close."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

from stablelab.errors import UsageError
from stablelab.io import atomic_write_bytes, atomic_write_json, read_json, to_jsonable
from stablelab.monitor.sinks import Sink

SESSIONS, CONFIG, METRICS, EVENTS, INCIDENTS, PARQUET, RESULT, DONE = (
    "sessions.jsonl", "config.json", "metrics.jsonl", "events.jsonl", "incidents.json",
    "metrics.parquet", "result.json", "done")
# a folder of an earlier version (before sessions.jsonl) is recognised by its config.json's kind
_LEGACY_KIND = "monitor"


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """JSONL rows; a torn last line (a killed writer) is ignored."""
    if not path.exists():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 2:
                    raise
    return rows


def _last_step(path: Path) -> int | None:
    """The largest `step` in a JSONL file, read from its tail (the file is in step order per session)."""
    if not path.exists():
        return None
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - (1 << 16)))
        tail = handle.read().decode("utf-8", errors="replace").split("\n")
    steps = []
    for line in tail[1:] if size > (1 << 16) else tail:
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
            continue
    return max(steps) if steps else None


def inspect(log_dir: Path) -> str:
    """"new", "continue" or raises UsageError for a folder holding files the monitor did not write."""
    if not log_dir.exists():
        return "new"
    if not log_dir.is_dir():
        raise UsageError(f"log_dir {log_dir} is a file, not a folder")
    if (log_dir / SESSIONS).exists():
        return "continue"
    entries = sorted(p.name for p in log_dir.iterdir())
    if not entries:
        return "new"
    legacy = (log_dir / CONFIG).exists() and (log_dir / METRICS).exists()
    if legacy:
        try:
            legacy = read_json(log_dir / CONFIG).get("kind") == _LEGACY_KIND
        except (OSError, ValueError, AttributeError):
            legacy = False
    if legacy:
        return "continue"
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise UsageError(f"log_dir {log_dir} holds files the monitor did not write ({shown}); give the "
                     f"monitor a folder of its own, e.g. log_dir={str(log_dir / 'stablelab')!r}")


class LogFolder(Sink):
    """The run store of one monitor session in `log_dir` (see the module docstring).
    `next_step` is the step after the last one any earlier session logged (None for a new folder)."""

    def __init__(self, log_dir: str | Path, config: dict[str, Any], fsync_every: int = 200):
        self.dir = Path(log_dir)
        mode = inspect(self.dir)
        previous = _read_lines(self.dir / SESSIONS) if mode == "continue" else []
        legacy = mode == "continue" and not previous
        self.session = (max(int(s["session"]) for s in previous) + 1) if previous else int(legacy)
        self.earlier = previous + ([{"session": 0, "first_step": 0, "legacy": True}] if legacy else [])
        last = max(filter(None.__ne__, (_last_step(self.dir / METRICS), _last_step(self.dir / EVENTS))),
                   default=None) if mode == "continue" else None
        self.next_step = None if last is None else last + 1
        self.config, self.mode = config, mode
        self.fsync_every, self._since_sync = fsync_every, 0
        self._session_written = False

    def open(self) -> None:
        """Start writing (after every other sink has started: nothing is written before)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.mode == "continue" and (self.dir / DONE).exists():
            os.unlink(self.dir / DONE)  # the earlier session's own marker: this run is live again
        atomic_write_json(self.dir / CONFIG, self.config)
        self._metrics = open(self.dir / METRICS, "a", encoding="utf-8", buffering=1)
        self._events = open(self.dir / EVENTS, "a", encoding="utf-8", buffering=1)

    def _start_session(self, step: int) -> None:
        if self._session_written:
            return
        self._session_written = True
        line = {"session": self.session, "first_step": step, "started": time.time(),
                "continued": bool(self.earlier)}
        with open(self.dir / SESSIONS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def rows(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self._start_session(int(rows[0]["step"]))
        for row in rows:
            self._metrics.write(json.dumps(to_jsonable({**row, "session": self.session}), allow_nan=False) + "\n")
            self._since_sync += 1
        if self._since_sync >= self.fsync_every:
            self._sync()

    def events(self, events) -> None:
        for event in events:
            self._start_session(event.step)
            self._events.write(json.dumps(to_jsonable({**event.to_dict(), "session": self.session}),
                                          allow_nan=False) + "\n")

    def _sync(self) -> None:
        for handle in (self._metrics, self._events):
            handle.flush()
            os.fsync(handle.fileno())
        self._since_sync = 0

    def close(self, summary: dict[str, Any]) -> None:
        self._sync()
        for handle in (self._metrics, self._events):
            handle.close()
        atomic_write_json(self.dir / INCIDENTS, self._merged_incidents(summary.get("incidents", [])))
        self._write_parquet()
        atomic_write_json(self.dir / RESULT, {**summary, "session": self.session,
                                              "sessions": len(self.earlier) + 1})
        atomic_write_bytes(self.dir / DONE, b"")

    def _merged_incidents(self, current: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Earlier sessions' incidents, then this one's; an incident this session continued
        (restored by load_state_dict: same kind and start) replaces its earlier record."""
        earlier = read_json(self.dir / INCIDENTS) if (self.dir / INCIDENTS).exists() else []
        mine = {(i["kind"], i["start"]) for i in current}
        kept = [i for i in earlier if (i.get("kind"), i.get("start")) not in mine]
        return kept + [{**i, "session": self.session} for i in current]

    def _write_parquet(self) -> None:
        try:
            from stablelab.store.run_store import rows_to_table
            import pyarrow.parquet as pq
        except ImportError:  # the light install: the JSONL holds every row
            return
        tmp = self.dir / f".{PARQUET}.{os.getpid()}.tmp"
        pq.write_table(rows_to_table(latest_rows(_read_lines(self.dir / METRICS))), tmp)
        os.replace(tmp, self.dir / PARQUET)


def latest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step, in step order: where a resumed session went over steps an earlier one had
    logged (it restarted from an older checkpoint), the later session's row."""
    latest: dict[int, dict[str, Any]] = {}
    for row in rows:
        step = row.get("step")
        if step is not None and row.get("session", 0) >= latest.get(step, {}).get("session", -1):
            latest[step] = row
    return [latest[s] for s in sorted(latest)]


def load_rows(log_dir: str | Path) -> list[dict[str, Any]]:
    """The run's rows as it stands: the Parquet of a closed folder, else the live JSONL."""
    log_dir = Path(log_dir)
    if (log_dir / DONE).exists() and (log_dir / PARQUET).exists():
        import pyarrow.parquet as pq

        return pq.read_table(log_dir / PARQUET).to_pylist()
    return latest_rows(_read_lines(log_dir / METRICS))


def sessions(log_dir: str | Path) -> list[dict[str, Any]]:
    """The sessions that wrote a monitor folder (empty for a folder of an older version)."""
    return _read_lines(Path(log_dir) / SESSIONS)
