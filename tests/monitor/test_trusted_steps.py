"""Issue 21, point 1: the guard learns only from steps it trusts. A fault lasting several steps
(1-10 consecutive steps with every gradient x10, x100 or x1000) is judged against the level before
it on every one of its steps, is handled on each (the policy skips grad_outlier and grad_spike
steps), and is one incident whose length is the fault's; under AdamW, SGD with momentum and Adam
with float16 autocast + GradScaler."""

import pytest
import torch
import torch.nn.functional as F

from monitor_test_helpers import assert_same_state, classification_task, mlp, state_copy, warnings_of
from stablelab.monitor import Monitor

START = 100  # after the grad_spike detector has its 32 trusted steps (warm-up 20)
POLICY = {"nonfinite": "skip", "grad_outlier": "skip", "grad_spike": "skip", "*": "warn"}


def _run(optimizer_name: str, factor: float, length: int, steps: int = START + 40):
    x, y, g = classification_task()
    torch.manual_seed(0)
    model = mlp()
    if optimizer_name == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    elif optimizer_name == "sgd_momentum":
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    fp16 = optimizer_name == "adam_fp16"
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=10 ** 6) if fp16 else None
    monitor = Monitor(model, optimizer, policy=POLICY, sinks=(), grad_scaler=scaler)
    before = None
    for step in range(steps):
        index = torch.randint(0, len(x), (32,), generator=g)
        with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
            loss = F.cross_entropy(model(x[index]), y[index])
        if fp16:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if step == START:
            before = state_copy(model, optimizer)
        if START <= step < START + length:  # the fault: every (unscaled) gradient x factor
            for p in model.parameters():
                p.grad.mul_(factor)
        monitor.observe(loss)
        if fp16:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad()
        if step == START + length - 1:
            after = state_copy(model, optimizer)
    monitor.close()
    return monitor, before, after


@pytest.mark.parametrize("optimizer_name", ["adamw", "sgd_momentum", "adam_fp16"])
@pytest.mark.parametrize("factor", [10.0, 100.0, 1000.0])
@pytest.mark.parametrize("length", [1, 3, 10])
def test_a_fault_lasting_several_steps_is_handled_on_every_step_as_one_incident(optimizer_name, factor, length):
    monitor, before, after = _run(optimizer_name, factor, length)
    fault = list(range(START, START + length))
    assert monitor.skipped_steps == fault  # every step of the fault, and no other
    assert_same_state(before, after)  # nothing of the fault reached the weights or the moments
    kind = "grad_outlier" if factor > 50 else "grad_spike"  # outlier_factor 50
    [incident] = [i for i in monitor.incidents if i.severity != "info"]
    assert (incident.kind, incident.start, incident.end, incident.length) == (kind, START, START + length - 1, length)
    assert len(incident.events) == length and {a.kind for a in incident.actions} == {"skip"}
    assert f"({length} steps)" in incident.summary() or length == 1
    assert {e.step for e in warnings_of(monitor.events)} == set(fault)


def _converged_classifier(policy=None, spikes=(100, 1500), steps=1600):
    from monitor_test_helpers import train_classifier

    x, y, g = classification_task()
    torch.manual_seed(0)
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    monitor = Monitor(model, optimizer, policy=policy, sinks=())

    def plant(step):
        if step in spikes:
            for p in model.parameters():
                p.grad.mul_(10.0)

    train_classifier(model, optimizer, monitor, x, y, g, steps, plant)
    monitor.close()
    return monitor


def test_a_spike_that_moves_nothing_on_a_converged_model_is_information():
    """Issue 21, point 2: the same 10x gradient is a warning at step 100 (loss 0.2 of a start of
    ~1.1) and information at step 1500, where the classifier has converged (loss < 1% of its start)
    and the spiked norm and the step's update-to-weight ratio stay below those of its early steps."""
    monitor = _converged_classifier()
    spikes = {e.step: e for e in monitor.events if e.kind == "grad_spike"}
    assert set(spikes) == {100, 1500}
    assert spikes[100].severity == "warning"
    late = spikes[1500]
    assert late.severity == "info" and "moved nothing" in late.message
    assert late.data["update_ratio"] is not None
    assert [i.start for i in monitor.incidents if i.severity != "info"] == [100]


def test_a_spike_acted_on_before_its_update_is_known_stays_a_warning():
    """When the policy acts on grad_spike (skip), it is judged before the optimizer steps: the
    update is unknown, so the late spike is not called harmless."""
    monitor = _converged_classifier(policy={"grad_spike": "skip", "grad_outlier": "skip", "nonfinite": "skip"})
    spikes = {e.step: e.severity for e in monitor.events if e.kind == "grad_spike"}
    assert spikes == {100: "warning", 1500: "warning"}
    assert 1500 in monitor.skipped_steps
