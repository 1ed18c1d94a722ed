"""Finding the runs under a path and reading each with the reader of its format."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from stablelab.errors import UsageError
from stablelab.logs.aliases import map_columns, tensor_columns

FORMATS = ("tensorboard", "csv", "hf", "mlflow", "jsonl")


@dataclass
class LogSource:
    """One run's log: its path (a file, or the folder of an MLflow run or of TensorBoard files)."""

    path: Path
    format: str

    @property
    def name(self) -> str:
        return self.path.name if self.path.is_dir() else f"{self.path.parent.name}/{self.path.name}"


@dataclass
class LoggedRun:
    """A run's logged signals: `series[signal] = (steps, values)` as numpy arrays in step order;
    `columns` every column (tag, key) the log had; `mapped` the column each signal was read from;
    `tensors[parameter] = (steps, values)` the per-tensor gradient norms, where logged."""

    source: LogSource
    columns: list[str]
    mapped: dict[str, str]
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    tensors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def interval(self) -> int | None:
        """The median step gap between logged losses (the logging interval), or None."""
        steps = self.series.get("loss", (np.array([]),))[0]
        if len(steps) < 2:
            return None
        return max(1, int(np.median(np.diff(steps))))


# -- finding runs -----------------------------------------------------------------------------------
def _sniff(path: Path) -> str | None:
    name = path.name.lower()
    if name.startswith("events.out.tfevents"):
        return "tensorboard"
    if name == "trainer_state.json":
        return "hf"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".jsonl") or name.endswith(".ndjson"):
        return "jsonl"
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    if not head.strip():
        return None
    text = head.decode("utf-8", errors="replace").lstrip()
    if text.startswith("{") and '"log_history"' in text:
        return "hf"
    if text.startswith("{"):
        return "jsonl"
    if "," in text.splitlines()[0]:
        return "csv"
    return None


def _is_mlflow_run(folder: Path) -> bool:
    return (folder / "meta.yaml").is_file() and (folder / "metrics").is_dir()


def find_runs(path: str | Path, format: str | None = None) -> list[LogSource]:
    """The runs under `path` (a file or a folder searched recursively), each with its format."""
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise UsageError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if path.is_file():
        found = format or _sniff(path)
        if found is None:
            raise UsageError(f"{path}: cannot tell its format from its content (empty, or not a training log); "
                             f"give --format ({', '.join(FORMATS)})")
        if found == "tensorboard":
            return [LogSource(path, "tensorboard")]
        return [LogSource(path, found)]
    if _is_mlflow_run(path) and format in (None, "mlflow"):
        return [LogSource(path, "mlflow")]
    runs: list[LogSource] = []
    tb_dirs = sorted({p.parent for p in path.rglob("events.out.tfevents*")})
    if format in (None, "tensorboard"):
        runs += [LogSource(d, "tensorboard") for d in tb_dirs]
    if format in (None, "mlflow"):
        runs += [LogSource(p.parent, "mlflow") for p in sorted(path.rglob("meta.yaml")) if _is_mlflow_run(p.parent)]
    if format in (None, "hf"):
        runs += [LogSource(p, "hf") for p in _latest_trainer_states(path)]
    for pattern, kind in (("*.csv", "csv"), ("*.jsonl", "jsonl"), ("*.ndjson", "jsonl")):
        if format in (None, kind):
            runs += [LogSource(p, kind) for p in sorted(path.rglob(pattern))]
    if format == "jsonl":
        runs += [LogSource(p, "jsonl") for p in sorted(path.rglob("*.json")) if _sniff(p) == "jsonl"]
    if not runs:
        raise UsageError(f"{path} holds no training log stablelab reads (TensorBoard event files, *.csv, "
                         "trainer_state.json, an MLflow run, *.jsonl)")
    return runs


def _latest_trainer_states(root: Path) -> list[Path]:
    """One trainer_state.json per HF output folder: the one whose log_history reaches furthest (the
    output folder's own, or its latest checkpoint-N)."""
    by_output: dict[Path, list[Path]] = {}
    for state in sorted(root.rglob("trainer_state.json")):
        output = state.parent.parent if state.parent.name.startswith("checkpoint-") else state.parent
        by_output.setdefault(output, []).append(state)

    def reach(state: Path) -> int:
        try:
            return int(json.loads(state.read_text()).get("global_step", 0))
        except (ValueError, OSError):
            return -1

    return [max(states, key=reach) for states in by_output.values()]


# -- reading ------------------------------------------------------------------------------------------
def read_log(source: LogSource, mapping: dict[str, str] | None = None) -> LoggedRun:
    """Read one run; UsageError (one line, naming the file) for a log that cannot be read or has
    no loss."""
    reader = READERS[source.format]
    try:
        columns, series_of = reader(source.path)
    except UsageError:
        raise
    except (ValueError, OSError, KeyError, TypeError) as error:
        raise UsageError(f"{source.path} cannot be read as {source.format} ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    mapped = map_columns(columns, mapping)
    if "loss" not in mapped:
        raise UsageError(f"{source.path}: no loss column among {', '.join(columns[:40]) or 'no columns'}; "
                         "name it with --map COLUMN=loss")
    run = LoggedRun(source, list(columns), mapped)
    for signal, column in mapped.items():
        if signal == "step":
            continue
        steps, values = series_of(column, mapped.get("step"))
        order = np.argsort(steps, kind="stable")
        run.series[signal] = (steps[order].astype(np.int64), values[order].astype(np.float64))
    for name, column in tensor_columns(columns).items():
        steps, values = series_of(column, mapped.get("step"))
        order = np.argsort(steps, kind="stable")
        run.tensors[name] = (steps[order].astype(np.int64), values[order].astype(np.float64))
    if len(run.series["loss"][0]) == 0:
        raise UsageError(f"{source.path}: its loss column {mapped['loss']!r} holds no value")
    return run


Series = Callable[[str, "str | None"], tuple[np.ndarray, np.ndarray]]


def _from_table(columns: dict[str, np.ndarray], n: int,
                present: dict[str, np.ndarray] | None = None) -> tuple[list[str], Series]:
    """columns: values per column (NaN where logged as NaN); present: where each column was logged
    at all (default: where it is not NaN). A logged NaN or inf is a finding, kept; a blank is a gap."""
    def series(column: str, step_column: str | None):
        values = columns[column]
        logged = present[column] if present is not None else ~np.isnan(values)
        steps = columns[step_column] if step_column else np.arange(n, dtype=np.float64)
        keep = logged & np.isfinite(steps)
        if step_column and present is not None:
            keep &= present[step_column]
        return steps[keep], values[keep]

    return list(columns), series


def _numeric(array) -> tuple[np.ndarray, np.ndarray]:
    """A pyarrow column as (float64 values, logged mask): nulls are gaps, NaN stays NaN."""
    import pyarrow as pa
    import pyarrow.compute as pc

    present = ~array.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_boolean(array.type):
        values = pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
        return np.where(present, values, np.nan), present
    return np.full(len(array), np.nan), np.zeros(len(array), dtype=bool)


def read_csv(path: Path):
    """CSV with a header (Lightning's CSVLogger: one row per logging call, blanks elsewhere; W&B
    exports: `_step` and one column per key), read with pyarrow's CSV reader. Only a blank cell is
    a gap: `nan` and `inf` are values a run logged."""
    import pyarrow.csv as pcsv

    if path.stat().st_size == 0:
        raise UsageError(f"{path} is empty")
    table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(null_values=[""], strings_can_be_null=True))
    read = {name: _numeric(table.column(name)) for name in table.column_names}
    return _from_table({k: v[0] for k, v in read.items()}, table.num_rows, {k: v[1] for k, v in read.items()})


def read_jsonl(path: Path):
    """One JSON object per line (W&B history exports, stablelab's metrics.jsonl), streamed: numbers
    are kept (NaN and Infinity too), a key missing from a line is a gap, a torn last line is ignored."""
    values: dict[str, list[float]] = {}
    logged: dict[str, list[bool]] = {}
    n = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a torn last line (a killed writer)
            if not isinstance(row, dict):
                raise UsageError(f"{path}: line {n + 1} is not a JSON object")
            for key, value in row.items():
                if key not in values:
                    values[key], logged[key] = [math.nan] * n, [False] * n
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                values[key].append(float(value) if number else math.nan)
                logged[key].append(number)
            n += 1
            for key in values:
                if len(values[key]) < n:
                    values[key].append(math.nan)
                    logged[key].append(False)
    if n == 0:
        raise UsageError(f"{path} holds no JSON line")
    return _from_table({k: np.asarray(v, dtype=np.float64) for k, v in values.items()}, n,
                       {k: np.asarray(v, dtype=bool) for k, v in logged.items()})


def read_hf(path: Path):
    """A Hugging Face Trainer's trainer_state.json: `log_history`, one dict per logging step."""
    state = json.loads(path.read_text())
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise UsageError(f"{path} has no log_history list: not a Trainer's trainer_state.json")
    keys: dict[str, None] = {}
    for entry in history:
        keys.update(dict.fromkeys(entry))

    def number(entry, key) -> bool:
        return isinstance(entry.get(key), (int, float)) and not isinstance(entry.get(key), bool)

    columns = {k: np.asarray([float(e[k]) if number(e, k) else np.nan for e in history], dtype=np.float64) for k in keys}
    present = {k: np.asarray([number(e, k) for e in history], dtype=bool) for k in keys}
    return _from_table(columns, len(history), present)


def read_tensorboard(path: Path):
    """TensorBoard event files (a file, or a folder of them), with tensorboard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    scalar_tags = list(tags.get("scalars", []))

    def series(tag: str, step_column: str | None):
        events = accumulator.Scalars(tag)
        return (np.fromiter((e.step for e in events), dtype=np.float64, count=len(events)),
                np.fromiter((e.value for e in events), dtype=np.float64, count=len(events)))

    if not scalar_tags:
        raise UsageError(f"{path}: the TensorBoard events hold no scalar")
    return scalar_tags, series


def read_mlflow(path: Path):
    """An MLflow file-store run folder (mlruns/EXPERIMENT/RUN), with MLflow's own FileStore."""
    import os

    from mlflow.store.tracking.file_store import FileStore

    # MLflow 3 refuses to open a file store unless told to: reading a run that exists is why it is kept
    previous = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        store = FileStore(str(path.parent.parent))
    finally:
        if previous is None:
            del os.environ["MLFLOW_ALLOW_FILE_STORE"]
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = previous
    run_id = path.name
    keys = sorted(store.get_run(run_id).data.metrics)

    def series(key: str, step_column: str | None):
        history = store.get_metric_history(run_id, key)
        return (np.asarray([m.step for m in history], dtype=np.float64),
                np.asarray([m.value for m in history], dtype=np.float64))

    return keys, series


READERS = {"tensorboard": read_tensorboard, "csv": read_csv, "hf": read_hf, "mlflow": read_mlflow,
           "jsonl": read_jsonl}
