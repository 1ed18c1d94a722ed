"""Issue 26: the monitor never deletes what it did not write, continues its own folder, and a run
stopped at step N and resumed from a checkpoint gives what the uninterrupted run gives."""

import json

import pytest
import torch
import torch.nn.functional as F

from monitor_test_helpers import classification_task, mlp
from stablelab.errors import UsageError
from stablelab.monitor import Monitor

STEPS, POLICY = 120, {"nonfinite": "skip", "grad_outlier": "skip", "loss_spike": "skip", "*": "warn"}


def _batch(x, y, step):
    """The batch of a step depends on the step only (a resumed loop sees the same data); step 30
    has its gradients x1000 (below), step 64 wrong labels, step 90 a NaN input."""
    g = torch.Generator().manual_seed(step)
    index = torch.randint(0, len(x), (32,), generator=g)
    xb, yb = x[index].clone(), y[index]
    if step == 64:
        yb = (yb + 1) % 4
    if step == 90:
        xb[3, 2] = float("nan")
    return xb, yb


def _fit(model, optimizer, monitor, first, last, checkpoint_at=None, path=None):
    """Returns the events the monitor had emitted when the checkpoint was saved (the ones found by
    the checkpoint's own read-back are decided after it: by the resumed run)."""
    x, y, _ = classification_task(n=512)
    emitted = None
    for step in range(first, last):
        if step == checkpoint_at:  # nanoGPT saves at the top of an iteration
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "monitor": monitor.state_dict(), "iter_num": step}, path)
            emitted = list(monitor.events)
        xb, yb = _batch(x, y, step)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        if step == 30:
            for p in model.parameters():
                p.grad.mul_(1000.0)
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
    return emitted


def _new(log_dir=None, **kwargs):
    torch.manual_seed(0)
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    return model, optimizer, Monitor(model, optimizer, log_dir, POLICY, sinks=(), **kwargs)


def _incidents(monitor):
    return [(i.kind, i.start, i.end, i.peak, i.severity, sorted({a.kind for a in i.actions}))
            for i in monitor.incidents]


@pytest.mark.parametrize("checkpoint_at", [50, 67])
def test_a_resumed_run_gives_the_uninterrupted_runs_events_incidents_and_skips(tmp_path, checkpoint_at):
    model, optimizer, whole = _new()
    _fit(model, optimizer, whole, 0, STEPS)
    whole.close()
    expected_events = sorted((e.kind, e.step) for e in whole.events)
    assert {"grad_outlier", "loss_spike", "nonfinite"} <= {k for k, _ in expected_events}

    model, optimizer, first = _new(tmp_path / "run")
    path = tmp_path / "ckpt.pt"
    emitted = _fit(model, optimizer, first, 0, checkpoint_at + 7, checkpoint_at=checkpoint_at, path=path)
    first.close()  # the process went on past the checkpoint, then died
    saved = torch.load(path, weights_only=True)  # plain types only

    model, optimizer, resumed = _new(tmp_path / "run")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["monitor"])
    assert resumed.step == checkpoint_at
    _fit(model, optimizer, resumed, saved["iter_num"], STEPS)
    summary = resumed.close()

    before = [(e.kind, e.step) for e in emitted]
    after = [(e.kind, e.step) for e in resumed.events]
    assert sorted(before + after) == expected_events
    assert resumed.skipped_steps == whole.skipped_steps
    assert _incidents(resumed) == [i for i in _incidents(whole) if i[2] >= checkpoint_at - 50]
    assert summary["events"] == whole.summary()["events"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["session"] for r in rows].count(1) == STEPS - checkpoint_at


def test_step_numbers_start_where_the_loop_resumes_and_state_loads_with_weights_only(tmp_path):
    model, optimizer, monitor = _new(start_step=1000)
    _fit(model, optimizer, monitor, 1000, 1030)
    assert monitor.step == 1030 and {e.step for e in monitor.events} <= set(range(1000, 1030))
    torch.save(monitor.state_dict(), tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    json.dumps(state)  # a Hugging Face trainer_state.json holds it as JSON
    _, _, other = _new()
    other.load_state_dict(state)
    assert other.step == 1030
    _, _, renumbered = _new(start_step=7)  # an explicit start_step is the user's numbering
    renumbered.load_state_dict(state)
    assert renumbered.step == 7 and renumbered.skipped_steps == monitor.skipped_steps
    layer = torch.nn.Linear(3, 2, bias=False)
    small = Monitor(layer, torch.optim.SGD(layer.parameters(), lr=0.1), sinks=())
    with pytest.raises(UsageError, match="parameter tensors"):
        small.load_state_dict(state)


def test_a_users_files_in_log_dir_survive(tmp_path):
    user_file = tmp_path / "out" / "my_checkpoints" / "model.pt"
    user_file.parent.mkdir(parents=True)
    user_file.write_bytes(b"weights")
    with pytest.raises(UsageError, match="did not write.*my_checkpoints") as error:
        _new(tmp_path / "out")
    assert "\n" not in str(error.value) and "stablelab" in str(error.value)
    model, optimizer, monitor = _new(tmp_path / "out" / "stablelab")  # the folder the message proposes
    _fit(model, optimizer, monitor, 0, 12)
    monitor.close()
    assert user_file.read_bytes() == b"weights"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["my_checkpoints", "stablelab"]


def test_a_restarted_run_keeps_both_sessions_rows_and_the_report_marks_the_restart(tmp_path):
    from stablelab.cli import main
    from stablelab.monitor.log_folder import load_rows, sessions

    log_dir = tmp_path / "run"
    for _ in range(2):
        model, optimizer, monitor = _new(log_dir)
        _fit(model, optimizer, monitor, monitor.step, monitor.step + 5)
        monitor.close()
    rows = load_rows(log_dir)
    assert [r["step"] for r in rows] == list(range(10))
    assert [r["session"] for r in rows] == [0] * 5 + [1] * 5
    assert [(s["session"], s["first_step"]) for s in sessions(log_dir)] == [(0, 0), (1, 5)]
    (log_dir / "notes.txt").write_text("mine")  # a file the user adds later is kept, and the folder continues
    model, optimizer, monitor = _new(log_dir)
    assert monitor.step == 10
    monitor.close()
    assert (log_dir / "notes.txt").read_text() == "mine"
    assert main(["report", str(log_dir)]) == 0
    assert "restarted 1 time(s): at step(s) 5 " in (log_dir / "report.html").read_text()


def test_the_tensorboard_sink_writes_beside_the_log_folder(tmp_path):
    pytest.importorskip("tensorboard")
    torch.manual_seed(0)
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    monitor = Monitor(model, optimizer, tmp_path / "run", sinks=("tensorboard",))
    _fit(model, optimizer, monitor, 0, 25)
    monitor.close()
    assert monitor.internal_errors == 0
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
