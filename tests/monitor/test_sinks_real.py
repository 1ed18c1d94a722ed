"""The sinks against the real libraries: TensorBoard's own reader, W&B in offline mode (its .wandb
file read back), MLflow's file store; and a failing sink, which costs no other sink anything."""

import json
import math
import struct
import time
import warnings
from pathlib import Path

import pytest
import torch

from monitor_test_helpers import RowSink, classification_task, mlp, multiply_gradients_at, train_classifier
from stablelab.monitor import Monitor, Sink
from stablelab.monitor.sinks import MLflowSink, TensorBoardSink, WandbSink, _mlflow_name


def _train(steps, sinks, log_dir=None, spike_step=None):
    """A tiny MLP, seeded, so two runs with the same arguments write the same rows."""
    torch.manual_seed(0)
    x, y, g = classification_task()
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = Monitor(model, optimizer, log_dir=log_dir, sinks=sinks)
    train_classifier(model, optimizer, monitor, x, y, g, steps,
                     None if spike_step is None else multiply_gradients_at(model, spike_step))
    monitor.close()
    return monitor


def _finite_columns(row):
    return {k: v for k, v in row.items() if k != "step" and not isinstance(v, bool)
            and isinstance(v, (int, float)) and math.isfinite(v)}


# -- TensorBoard --------------------------------------------------------------------------------
def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator, {tag: [(s.step, s.value) for s in accumulator.Scalars(tag)]
                         for tag in accumulator.Tags()["scalars"]}


def _assert_scalars_are_the_rows(scalars, rows):
    expected = {}
    for row in rows:
        for key, value in _finite_columns(row).items():
            expected.setdefault(key, []).append((row["step"], value))
    assert {"loss", "grad_norm", "lr"} <= set(scalars) and set(scalars) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in scalars[tag]] == [s for s, _ in points], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_tensorboard_event_files_hold_every_row_as_tensorboard_reads_them(tmp_path):
    pytest.importorskip("tensorboard")
    rows = RowSink()
    _train(30, [rows, TensorBoardSink(tmp_path / "tb")], spike_step=20)
    accumulator, scalars = _scalars(tmp_path / "tb")
    _assert_scalars_are_the_rows(scalars, rows.row_list)
    assert [r["step"] for r in rows.row_list] == [s for s, _ in scalars["loss"]] == list(range(30))
    assert "events/grad_outlier/text_summary" in accumulator.Tags()["tensors"]   # add_text's tag


def test_tensorboard_sink_by_name_writes_into_the_log_dir(tmp_path):
    pytest.importorskip("tensorboard")
    rows = RowSink()
    _train(30, ["tensorboard", rows], log_dir=tmp_path / "run")
    _, scalars = _scalars(tmp_path / "run" / "tensorboard")
    _assert_scalars_are_the_rows(scalars, rows.row_list)


def test_tensorboard_sink_flushes_within_flush_secs_before_close(tmp_path):
    pytest.importorskip("tensorboard")
    sink = TensorBoardSink(tmp_path / "tb", flush_secs=1)
    sink.rows([{"step": 0, "loss": 2.0}, {"step": 1, "loss": 1.5}])
    deadline, scalars = time.time() + 5, {}
    while time.time() < deadline and scalars.get("loss") != [(0, 2.0), (1, 1.5)]:
        time.sleep(0.2)
        _, scalars = _scalars(tmp_path / "tb")
    assert scalars.get("loss") == [(0, 2.0), (1, 1.5)]
    sink.close({})


# -- Weights & Biases, offline -----------------------------------------------------------------
@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(key, value)
    yield wandb
    if wandb.run is not None:
        wandb.finish()


def _wandb_records(run_dir: Path):
    """The records of an offline run's .wandb file, as wandb's own protobuf `Record`s. The file
    is a LevelDB-style log: a 7-byte header (":W&B", 0xBEE1, version), then 32 KiB blocks of
    chunks, each with a 7-byte header (crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    [path] = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    if len(data) < 7:
        return
    assert struct.unpack("<4sHB", data[:7])[:2] == (b":W&B", 0xBEE1)
    position, pending, block = 7, b"", 32768
    while position + 7 <= len(data):
        if block - position % block < 7:   # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:
            position += block - position % block
            continue
        if position + 7 + length > len(data):   # wandb-core is still writing this chunk
            return
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _read_offline_run(wandb_dir: Path, timeout: float = 30.0):
    """(history rows as dicts, metric definitions, alerts, number of exit records), once the
    file ends with the run's exit record (wandb-core may still be writing after `finish`)."""
    [run_dir] = (wandb_dir / "wandb").glob("offline-run-*")
    deadline = time.time() + timeout
    records = list(_wandb_records(run_dir))
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.time() < deadline:
        time.sleep(0.05)
        records = list(_wandb_records(run_dir))
    history, metrics, alerts, exits = [], [], [], 0
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "metric":
            metrics.append(record.metric)
        elif kind == "alert":
            alerts.append(record.alert)
        elif kind == "exit":
            exits += 1
    return history, metrics, alerts, exits


def test_wandb_sink_logs_under_its_prefix_on_its_own_step_and_leaves_the_users_run_open(
        wandb_offline, tmp_path):
    run = wandb_offline.init(mode="offline", dir=str(tmp_path), project="stablelab-test")
    run.log({"loss": 123.0})                       # the user's own key, on W&B's own step
    rows = RowSink()
    monitor = _train(45, [rows, WandbSink()], spike_step=30)
    assert wandb_offline.run is run                # not finished: the sink did not start it
    run.log({"loss": 1.0})
    run.finish()

    history, metrics, alerts, exits = _read_offline_run(tmp_path)
    assert exits == 1
    assert [h["loss"] for h in history if "loss" in h] == [123.0, 1.0]
    assert all(k.startswith(("stablelab/", "_")) or k == "loss" for h in history for k in h)
    definitions = {(m.name or m.glob_name, m.step_metric) for m in metrics}
    assert {("stablelab/step", ""), ("stablelab/*", "stablelab/step")} <= definitions

    logged_rows = [h for h in history if "stablelab/loss" in h]
    assert [h["stablelab/step"] for h in logged_rows] == [r["step"] for r in rows.row_list] == list(range(45))
    for logged, row in zip(logged_rows, rows.row_list):
        expected = {f"stablelab/{k}": v for k, v in _finite_columns(row).items()}
        assert {k for k in logged if not k.startswith("_")} == {"stablelab/step", *expected}
        assert [logged[k] for k in expected] == pytest.approx(list(expected.values()), rel=1e-6)

    events = [(h["stablelab/step"], k) for h in history for k in h if k.startswith("stablelab/events/")]
    assert sorted(events) == sorted((e.step, f"stablelab/events/{e.kind}") for e in monitor.events)
    assert (30, "stablelab/events/grad_outlier") in events
    [incident] = [i for i in monitor.incidents if i.severity == "critical"]
    title = f"stablelab: grad_outlier at step {incident.start}"
    assert [(a.title, a.level) for a in alerts] == [(title, "ERROR")]
    assert "grad_outlier (critical) step 30" in alerts[0].text


def test_wandb_sink_finishes_a_run_it_started(wandb_offline, tmp_path):
    assert wandb_offline.run is None
    sink = WandbSink(mode="offline", dir=str(tmp_path), project="stablelab-test")
    assert sink.started and wandb_offline.run is sink.run
    rows = RowSink()
    _train(12, [rows, sink])
    assert wandb_offline.run is None
    history, _, alerts, exits = _read_offline_run(tmp_path)
    assert exits == 1 and alerts == []
    assert [h["stablelab/step"] for h in history if "stablelab/loss" in h] == list(range(12))


def test_wandb_events_after_rows_of_later_steps_keep_their_own_step(wandb_offline, tmp_path):
    from stablelab.monitor.events import Event

    sink = WandbSink(mode="offline", dir=str(tmp_path))
    sink.rows([{"step": s, "loss": 1.0} for s in range(10)])
    sink.events([Event("loss_spike", 4, "warning", "late"), Event("loss_spike", 4, "warning", "again")])
    sink.close({})
    history, _, _, _ = _read_offline_run(tmp_path)
    [late] = [h for h in history if "stablelab/events/loss_spike" in h]
    assert late["stablelab/step"] == 4 and late["stablelab/events/loss_spike"] == 2
    assert late["_step"] == 10                   # W&B's own step only ever moves forward


# -- MLflow, file store ------------------------------------------------------------------------
@pytest.fixture
def mlflow_file_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow 3.x asks for this opt-in
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    yield mlflow
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _assert_points(actual, expected):
    assert [step for step, _ in actual] == [step for step, _ in expected]
    assert [value for _, value in actual] == pytest.approx([value for _, value in expected], rel=1e-6)


def test_mlflow_sink_writes_the_rows_and_leaves_the_users_run_open(mlflow_file_store):
    mlflow = mlflow_file_store
    client = mlflow.tracking.MlflowClient()
    rows = RowSink()
    with mlflow.start_run() as run:
        monitor = _train(45, [rows, MLflowSink()], spike_step=30)
        assert mlflow.active_run().info.run_id == run.info.run_id
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
    run_id = run.info.run_id
    _assert_points(_history(client, run_id, "stablelab/loss"),
                   [(r["step"], r["loss"]) for r in rows.row_list])
    assert [s for s, _ in _history(client, run_id, "stablelab/loss")] == list(range(45))
    logged = set(client.get_run(run_id).data.metrics)
    assert logged == {f"stablelab/{k}".replace("/", ".").replace(".", "/", 1)
                      for r in rows.row_list for k in _finite_columns(r)} | {
        f"stablelab/events/{e.kind}" for e in monitor.events}
    per_tensor = next(k for k in rows.row_list[0] if k.startswith("grad_norm/"))   # on sampled steps
    _assert_points(_history(client, run_id, "stablelab/" + per_tensor.replace("/", ".")),
                   [(r["step"], r[per_tensor]) for r in rows.row_list if per_tensor in r])
    assert _history(client, run_id, "stablelab/events/grad_outlier") == [(30, 1.0)]


def test_mlflow_sink_ends_a_run_it_started(mlflow_file_store):
    mlflow = mlflow_file_store
    sink = MLflowSink()
    assert sink.started and mlflow.active_run().info.run_id == sink.run_id
    _train(12, [sink])
    assert mlflow.active_run() is None
    client = mlflow.tracking.MlflowClient()
    assert client.get_run(sink.run_id).info.status == "FINISHED"
    assert [s for s, _ in _history(client, sink.run_id, "stablelab/grad_norm")] == list(range(12))


def test_mlflow_names_keep_only_what_mlflow_accepts_on_every_platform():
    assert _mlflow_name("stablelab/grad_norm/blocks.0.attn:q") == "stablelab/grad_norm/blocks.0.attn_q"
    assert _mlflow_name("stablelab/a//b/../c d/.") == "stablelab/a/b/c d"


# -- a failing sink ----------------------------------------------------------------------------
class BrokenSink(Sink):
    def rows(self, rows):
        raise OSError("disk full")

    def events(self, events):
        raise OSError("disk full")

    def incidents(self, opened, closed):
        raise OSError("disk full")

    def close(self, summary):
        raise OSError("disk full")


def test_a_failing_sink_is_reported_once_and_costs_the_others_and_the_guard_nothing():
    reference = RowSink()
    expected = _train(45, [reference], spike_step=30)
    rows = RowSink()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        monitor = _train(45, [BrokenSink(), rows], spike_step=30)
    assert [r["loss"] for r in rows.row_list] == [r["loss"] for r in reference.row_list]
    assert [r["step"] for r in rows.row_list] == list(range(45))
    assert [(e.kind, e.step) for e in rows.event_list] == [(e.kind, e.step) for e in expected.events]
    assert [(e.kind, e.step) for e in monitor.events] == [(e.kind, e.step) for e in expected.events]
    assert monitor.skipped_steps == expected.skipped_steps == [30]
    assert rows.closed is not None
    reports = [w for w in seen
               if issubclass(w.category, RuntimeWarning) and "stablelab monitor" in str(w.message)]
    assert len(reports) == 1
