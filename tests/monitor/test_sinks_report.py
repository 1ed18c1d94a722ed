"""Sinks (the log folder, TensorBoard) and `stablelab report RUN_DIR`."""

from html import escape as html_escape
import json
import sys
import types
from collections import Counter

import pytest
import torch

from monitor_test_helpers import RowSink, classification_task, mlp, multiply_gradients_at, train_classifier
from stablelab.errors import UsageError
from stablelab.monitor import Monitor, TensorBoardSink, WandbSink


def _train(steps, sinks, log_dir=None, spike_step=None):
    x, y, g = classification_task()
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = Monitor(model, optimizer, log_dir=log_dir, sinks=sinks, config={"note": "test"})
    train_classifier(model, optimizer, monitor, x, y, g, steps,
                     None if spike_step is None else multiply_gradients_at(model, spike_step))
    monitor.close()
    return monitor


def test_run_store_and_report_page(tmp_path):
    from stablelab.cli import main
    from stablelab.store.run_store import load_config, load_events, load_metrics, load_result

    rows = RowSink()
    run_dir = tmp_path / "run"
    monitor = _train(45, [rows], log_dir=run_dir, spike_step=30)
    assert (run_dir / "done").exists() and (run_dir / "metrics.parquet").exists()
    stored = load_metrics(run_dir)
    assert [r["step"] for r in stored] == list(range(45))
    assert [r["loss"] for r in stored] == pytest.approx([r["loss"] for r in rows.row_list])
    assert [e["kind"] for e in load_events(run_dir)] == [e.kind for e in monitor.events] == ["grad_outlier", "skip"]
    config = load_config(run_dir)
    assert config["note"] == "test" and config["policy"]["nonfinite"] == ["skip"]
    assert load_result(run_dir)["events"] == {"grad_outlier": 1, "skip": 1}
    [incident] = load_result(run_dir)["incidents"]
    assert incident["kind"] == "grad_outlier" and incident["start"] == 30 and incident["actions"] == ["skip"]
    assert json.loads((run_dir / "incidents.json").read_text()) == [
        {**i, "session": 0} for i in load_result(run_dir)["incidents"]]

    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text()
    assert "grad_outlier" in html and "data:image/png;base64," in html
    assert "<h2>Incidents</h2>" in html and "extreme gradient outlier" in html
    result = load_result(run_dir)  # the task the monitor assumed, and why, in result.json and on the page
    assert result["task"] == "classification" and "autograd graph" in result["task_reason"]
    assert html_escape(f"task: classification ({result['task_reason']})") in html
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["events"] == dict(Counter(e.kind for e in monitor.events))
    assert summary["first_step_by_kind"] == {"grad_outlier": 30}
    assert summary["final_loss"] == pytest.approx(rows.row_list[-1]["loss"])


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    from stablelab.cli import main

    assert main(["report", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    from stablelab.report import run_page

    with pytest.raises(UsageError):
        run_page.run(types.SimpleNamespace(run_dir=str(tmp_path / "missing"), out=None, max_events=10))


def test_tensorboard_sink_writes_the_rows(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = RowSink()
    _train(12, [rows, TensorBoardSink(tmp_path / "tb")])
    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    scalars = accumulator.Scalars("loss")
    assert [s.step for s in scalars] == [r["step"] for r in rows.row_list]
    assert [s.value for s in scalars] == pytest.approx([r["loss"] for r in rows.row_list], rel=1e-6)


def test_missing_optional_sink_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)   # import fails as if not installed
    with pytest.raises(UsageError, match="pip install"):
        WandbSink()
