"""Planted faults on models that are not the reference transformer (issue 3, "Done when")."""

import logging
import warnings

import pytest
import torch
import torch.nn.functional as F

from monitor_test_helpers import (EncoderClassifier, RowSink, assert_same_state, classification_task, full_batch_steps,
                                  mlp, multiply_gradients_at, state_copy, train_classifier, warnings_of)
from stablelab.monitor import Monitor, Policy, TrainingStopped


def _batch(x, y, g, size=32):
    index = torch.randint(0, len(x), (size,), generator=g)
    return x[index], y[index]


@pytest.mark.parametrize("optimizer_name", ["adamw", "sgd"])
def test_gradient_spike_1000x_is_skipped_and_leaves_the_run_where_it_was(optimizer_name):
    """Default policy: a 1000x gradient is an extreme outlier; the step is not taken (host mode on
    CPU), so weights and optimizer state after it equal those before it, bit for bit."""
    x, y, g = classification_task()
    model = mlp()
    if optimizer_name == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    monitor = Monitor(model, optimizer, sinks=())
    spike_step, states = 57, {}

    def plant(step):
        multiply_gradients_at(model, spike_step)(step)
        if step == spike_step:
            states["before"] = state_copy(model, optimizer)

    train_classifier(model, optimizer, monitor, x, y, g, spike_step + 1, plant)
    assert_same_state(states["before"], state_copy(model, optimizer))
    train_classifier(model, optimizer, monitor, x, y, g, 20)
    monitor.close()
    assert monitor.skipped_steps == [spike_step]
    assert [(e.kind, e.step) for e in warnings_of(monitor.events)] == [("grad_outlier", spike_step)]
    assert monitor.events[-1].kind == "skip" and monitor.events[-1].data["mode"] == "host"
    [incident] = monitor.incidents
    assert (incident.kind, incident.start, incident.end, incident.peak) == ("grad_outlier", 57, 57, 57)
    assert [a.kind for a in incident.actions] == ["skip"]


def test_device_side_skip_reads_nothing_back_per_step_and_drops_the_gradient():
    """skip_mode="device" (the default on accelerators): no host read between sync windows; the
    outlier's gradients are zeroed on the device, so Adam takes a step with no new information."""
    x, y, g = classification_task()
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = Monitor(model, optimizer, policy=Policy(skip_mode="device"), sinks=())
    assert monitor.guard.device_skips == {"nonfinite", "grad_outlier"} and not monitor._immediate
    reads = []
    original = torch.Tensor.tolist
    seen = {}

    def plant(step):
        multiply_gradients_at(model, 57)(step)
        if step == 57:
            seen["v_before"] = [optimizer.state[p]["exp_avg_sq"].clone() for p in model.parameters()]

    def counting_tolist(self):
        reads.append(monitor.step)
        return original(self)

    torch.Tensor.tolist = counting_tolist
    try:
        train_classifier(model, optimizer, monitor, x, y, g, 58, plant)
    finally:
        torch.Tensor.tolist = original
    # one read per sync window (steps 10, 20, ...), never per step
    assert len(reads) <= 58 // monitor.sync_every + 1
    # the second moment only decayed: the 1000x gradient never entered it
    for p, v in zip(model.parameters(), seen["v_before"]):
        assert torch.allclose(optimizer.state[p]["exp_avg_sq"], v * 0.999)
    monitor.close()
    assert monitor.skipped_steps == [57]
    assert [e.kind for e in monitor.events] == ["grad_outlier", "skip"]
    assert monitor.events[-1].data["mode"] == "device"


def test_nan_batch_is_flagged_and_skipped_under_the_default_policy():
    torch.manual_seed(0)
    model = EncoderClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sink = RowSink()
    monitor = Monitor(model, optimizer, sinks=[sink], sync_every=5)
    assert len(monitor.attention_layers) == 2          # nn.MultiheadAttention inside each layer
    g = torch.Generator().manual_seed(1)
    nan_step = 12
    for step in range(20):
        xb = torch.randn(8, 6, 16, generator=g)
        yb = torch.randint(0, 4, (8,), generator=g)
        if step == nan_step:
            xb[3, 2, 5] = float("nan")
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        if step == nan_step:
            before = state_copy(model, optimizer)
        monitor.observe(loss)
        optimizer.step()
        if step == nan_step:
            assert_same_state(before, state_copy(model, optimizer))   # nothing moved
        optimizer.zero_grad()
    monitor.close()
    nonfinite = [e for e in monitor.events if e.kind == "nonfinite"]
    assert [e.step for e in nonfinite] == [nan_step]
    assert nonfinite[0].data["parameter"] is not None
    assert [(e.step, e.data["cause"]) for e in monitor.events if e.kind == "skip"] == [(nan_step, "nonfinite")]
    assert monitor.skipped_steps == [nan_step]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    skipped = {r["step"]: r["skipped"] for r in sink.row_list}
    assert skipped[nan_step] == 1 and sum(skipped.values()) == 1
    assert any("attn_logit_max" in r for r in sink.row_list)


def test_learning_rate_raised_100x_is_flagged_before_the_loss_doubles():
    x, y, g = classification_task()
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = Monitor(model, optimizer, sinks=(), sync_every=10)
    raise_step, losses, known_when_doubled = 150, [], None
    for step in range(230):
        if step == raise_step:
            for group in optimizer.param_groups:
                group["lr"] *= 100
        xb, yb = _batch(x, y, g)
        loss = F.cross_entropy(model(xb), yb)
        losses.append(loss.item())
        level = sum(losses[raise_step - 20:raise_step]) / 20 if step >= raise_step else None
        if known_when_doubled is None and level is not None and losses[-1] > 2 * level:
            known_when_doubled = list(monitor.events)   # what the monitor had said by then
            doubled = step
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
    monitor.close()
    assert known_when_doubled is not None, "the planted fault must actually hurt (else the test proves nothing)"
    flagged = [e for e in warnings_of(known_when_doubled) if e.step >= raise_step]
    assert flagged, f"nothing flagged before the loss doubled at step {doubled}"
    assert flagged[0].kind == "update_ratio" and flagged[0].step == raise_step
    assert not warnings_of([e for e in monitor.events if e.step < raise_step])


def test_stable_run_of_2000_steps_raises_no_warning():
    x, y, g = classification_task(seed=3)
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sink = RowSink()
    monitor = Monitor(model, optimizer, sinks=[sink])
    for _ in range(2000):
        xb, yb = _batch(x, y, g)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
    summary = monitor.close()
    assert monitor.events == [], [str(e) for e in monitor.events[:5]]
    assert summary["steps"] == 2000 and len(sink.row_list) == 2000
    assert sink.row_list[-1]["loss"] < sink.row_list[0]["loss"]   # it did train


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_rollback_restores_bit_identical_state(where, tmp_path):
    x, y, g = classification_task()
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    policy = Policy({"nonfinite": "rollback"}, snapshot_every=10,
                    snapshot_dir=str(tmp_path / "snap") if where == "disk" else None)
    monitor = Monitor(model, optimizer, policy=policy, sinks=(), sync_every=10)
    copies, fault_step = {}, 27
    for step in range(fault_step + 1):
        xb, yb = _batch(x, y, g)
        if step == fault_step:
            xb = xb.clone()
            xb[0, 0] = float("inf")
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        copies[step] = state_copy(model, optimizer)    # what a snapshot at this step would hold
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
    monitor.close()
    [rollback] = [e for e in monitor.events if e.kind == "rollback"]
    assert rollback.step == fault_step and rollback.data["snapshot_step"] == 20
    assert_same_state(copies[20], state_copy(model, optimizer))
    if where == "disk":
        assert (tmp_path / "snap" / "snapshot.pt").exists()
        assert not list((tmp_path / "snap").glob("*.tmp"))


def test_stop_raises_with_the_diagnosis():
    x, y, g = classification_task()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer, policy={"nonfinite": "stop"}, sinks=())
    with pytest.raises(TrainingStopped) as info:
        for step in range(10):
            xb, yb = _batch(x, y, g)
            loss = F.cross_entropy(model(xb), yb) * (float("nan") if step == 4 else 1.0)
            loss.backward()
            monitor.observe(loss)
            optimizer.step()
            optimizer.zero_grad()
    assert info.value.event.kind == "nonfinite" and info.value.event.step == 4
    assert "step 4" in str(info.value)
    monitor.close()


def test_internal_error_is_logged_once_and_training_continues(caplog):
    x, y, g = classification_task()
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = Monitor(model, optimizer, sinks=(), sync_every=1)

    def broken(step, row):
        raise RuntimeError("planted detector bug")

    monitor.detectors[1].detect = broken          # fires on every row once past warm-up
    monitor.detectors[1].warmup = 0
    start = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.ERROR, "stablelab.monitor"):
        warnings.simplefilter("always")
        train_classifier(model, optimizer, monitor, x, y, g, 15)
        monitor.close()
    assert monitor.internal_errors >= 10
    assert len([r for r in caplog.records if "internal error" in r.getMessage()]) == 1
    assert len([w for w in caught if "internal error" in str(w.message)]) == 1
    assert monitor.step == 15
    assert all(not torch.equal(a, b.detach()) for a, b in zip(start, model.parameters()))  # it trained


def test_the_interface_of_the_issue(capsys):
    from stablelab import Monitor as TopLevelMonitor

    x, y, g = classification_task()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = TopLevelMonitor(model, optimizer, log_dir=None, policy=None)   # console sink by default
    for step in range(30):
        xb, yb = _batch(x, y, g)
        loss = F.cross_entropy(model(xb), yb) * (float("inf") if step == 21 else 1.0)
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
    monitor.close()
    assert [(e.kind, e.step, e.severity) for e in monitor.events] == [
        ("nonfinite", 21, "critical"), ("skip", 21, "info")]
    assert all(e.message for e in monitor.events)
    assert "nonfinite" in capsys.readouterr().err


@pytest.mark.parametrize("scheduler_first", [True, False])
def test_lr_scheduler_created_before_or_after_the_monitor(scheduler_first):
    x, y, g = classification_task()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    make = lambda: torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)  # noqa: E731
    scheduler = make() if scheduler_first else None
    monitor = Monitor(model, optimizer, sinks=())
    scheduler = scheduler or make()
    for step in range(12):
        xb, yb = _batch(x, y, g)
        loss = F.cross_entropy(model(xb), yb) * (float("nan") if step == 7 else 1.0)
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    monitor.close()
    assert monitor.skipped_steps == [7]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 2)   # 12 scheduler steps
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_edge_of_stability_slot_on_linear_regression():
    """MSE of a linear model: H = 2 X^T X / n exactly, so lambda_max is known by hand; gradient
    descent with lr above 2 / lambda_max must be flagged by the scheduled sharpness check."""
    pytest.importorskip("stablelab.signals.curvature")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g) * torch.tensor([3.0, 1.0, 1.0, 0.5, 0.2])
    y = x @ torch.randn(5, 1, generator=g)
    lambda_max = torch.linalg.eigvalsh(2 * x.T @ x / len(x)).max().item()
    model = torch.nn.Linear(5, 1, bias=False)
    lr = 2.2 / lambda_max                      # just past the stability threshold 2 / lr
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = lambda m, batch: F.mse_loss(m(batch[0]), batch[1])   # noqa: E731
    sink = RowSink()
    monitor = Monitor(model, optimizer, sinks=[sink], sharpness_every=5, sharpness_loss_fn=loss_fn,
                      sharpness_batch=(x, y), detectors={"loss_spike": False, "update_ratio": False})
    full_batch_steps(model, optimizer, monitor, loss_fn, (x, y), 11)
    rows = {r["step"]: r for r in sink.row_list}
    assert rows[5]["sharpness_lambda_max"] == pytest.approx(lambda_max, rel=1e-3)
    eos = [e for e in monitor.events if e.kind == "edge_of_stability"]
    assert [e.step for e in eos] == [5, 10]
    assert eos[0].data["ratio"] == pytest.approx(lambda_max / (2 / lr), rel=1e-3)   # = 1.1


def test_mixed_precision_parameters():
    model = mlp()
    model[0].to(torch.bfloat16)                       # a bf16 layer beside fp32 ones
    model[0].register_forward_pre_hook(lambda m, args: (args[0].to(torch.bfloat16),))
    model[1].register_forward_pre_hook(lambda m, args: (args[0].float(),))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = Monitor(model, optimizer, sinks=(), sync_every=3)
    x, y, g = classification_task()
    train_classifier(model, optimizer, monitor, x, y, g, 7)
    monitor.close()
    assert monitor.internal_errors == 0 and monitor.events == []


def test_gradscaler_overflow_is_information_and_costs_no_healthy_step():
    """float16 autocast + GradScaler starting at a scale that overflows: GradScaler skips those
    steps and lowers its scale. With grad_scaler= the monitor calls them info, not warnings, and
    never skips a step GradScaler takes (a skip meant for a step the scaler dropped is not carried
    over to the next one)."""
    x, y, g = classification_task()
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100, growth_interval=10 ** 6)
    monitor = Monitor(model, optimizer, sinks=(), grad_scaler=scaler)
    taken = 0
    for step in range(60):
        xb, yb = _batch(x, y, g)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(xb), yb)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        monitor.observe(loss)
        before = [p.detach().clone() for p in model.parameters()]
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        moved = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
        overflowed = scaler.get_scale() < scale
        assert moved != overflowed, f"step {step}: moved={moved}, scaler overflow={overflowed}"
        taken += moved
        optimizer.zero_grad()
    monitor.close()
    overflows = [e for e in monitor.events if e.kind == "nonfinite"]
    assert overflows and all(e.severity == "info" and e.data["amp_overflow"] for e in overflows)
    assert warnings_of(monitor.events) == [] and monitor.incidents == []
    assert taken == 60 - len(overflows)
    with pytest.raises(Exception, match="GradScaler"):
        Monitor(model, optimizer, sinks=(), grad_scaler=object())


def test_a_lasting_gradient_shift_is_skipped_for_a_few_steps_not_for_ever():
    """Users report static skip rules that skipped 393 of 394 steps after a level shift. Gradients
    100x larger from step 40 on (a loss scaled up for good): the steps of the shift are skipped as
    a fault lasting several steps would be, until `outlier_patience` (16) suspect steps in a row
    make the new level the typical one; then training goes on."""
    x, y, g = classification_task()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    monitor = Monitor(model, optimizer, sinks=())

    def shift(step):
        if step >= 40:
            for p in model.parameters():
                p.grad.mul_(100.0)

    train_classifier(model, optimizer, monitor, x, y, g, 120, shift)
    monitor.close()
    assert monitor.skipped_steps == list(range(40, 55))  # the 16th suspect step, 55, is the new level
