import json

import pyarrow.parquet as pq
import pytest

from stablelab.store.files import atomic_write_json, read_json
from stablelab.store.query import metrics_table, query
from stablelab.store.run_store import (RunTakenOver, RunWriter, is_done, load_metrics, load_result,
                                       read_jsonl)


def test_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    assert read_jsonl(path) == [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"st\n{"step": 2}\n{"step": 3}\n')
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(path)


def test_run_lifecycle_writes_parquet_then_done(tmp_path):
    run = tmp_path / "r"
    writer = RunWriter(run, {"lr": 0.1}).start()
    rows = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(5)] + [{"step": 5, "loss": float("nan"), "extra": 2.0}]
    for row in rows:
        writer.log(row)
    assert not is_done(run)
    assert [r["step"] for r in load_metrics(run)] == list(range(6))  # live JSONL readable
    writer.finish({"final_loss": 0.2, "diverged": False})
    assert is_done(run)
    table = pq.read_table(run / "metrics.parquet").to_pylist()
    assert [r["loss"] for r in table[:5]] == [1.0 / (s + 1) for s in range(5)]
    assert table[5]["loss"] is None and table[5]["extra"] == 2.0 and table[0]["extra"] is None
    assert load_result(run) == {"final_loss": 0.2, "diverged": False}
    assert read_json(run / "config.json") == {"lr": 0.1}


def test_restarted_run_takes_the_folder_over(tmp_path):
    first = RunWriter(tmp_path / "r", {"a": 1}).start()
    first.log({"step": 0})
    second = RunWriter(tmp_path / "r", {"a": 1}).start()  # e.g. a resume while an orphan still runs
    with pytest.raises(RunTakenOver):
        first.check_owner()
    second.check_owner()
    assert read_jsonl(tmp_path / "r" / "metrics.jsonl") == []  # the old attempt's rows are gone


def test_query_reads_finished_and_live_runs(tmp_path):
    done = RunWriter(tmp_path / "done_run", {}).start()
    done.log({"step": 0, "loss": 2.0})
    done.log({"step": 10, "loss": 1.0})
    done.finish({})
    live = RunWriter(tmp_path / "live_run", {}).start()
    live.log({"step": 0, "loss": 3.0})
    live.checkpoint()
    assert sorted(metrics_table(tmp_path).column("run").to_pylist()) == ["done_run", "done_run", "live_run"]
    rows = query(tmp_path, "SELECT run, min(loss) AS best FROM metrics GROUP BY run ORDER BY run").to_pylist()
    assert rows == [{"run": "done_run", "best": 1.0}, {"run": "live_run", "best": 3.0}]


def test_query_merges_a_live_runs_whole_numbers_with_a_finished_runs_floats(tmp_path):
    """A run killed early can hold only whole numbers in a column (JSON 0, read as int64) that a
    finished run stores as float: the query still reads both (the column becomes float). Found on a
    resumed study whose killed width-512 runs stopped it with 'incompatible types: double vs int64'."""
    done = RunWriter(tmp_path / "done_run", {}).start()
    done.log({"step": 0, "loss": 2.0, "grad_norm_typical": 0.5})
    done.finish({})
    live = RunWriter(tmp_path / "live_run", {}).start()
    live.log({"step": 0, "loss": 3.0, "grad_norm_typical": 0})
    live.checkpoint()
    rows = query(tmp_path, "SELECT run, grad_norm_typical AS g FROM metrics ORDER BY run").to_pylist()
    assert rows == [{"run": "done_run", "g": 0.5}, {"run": "live_run", "g": 0.0}]
    assert isinstance(rows[1]["g"], float)


def test_atomic_json_has_no_nan(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": float("nan"), "b": [1.0, float("inf")]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [1.0, None]}
    assert not list(tmp_path.glob(".*tmp"))
