"""Incidents: consecutive events of one cause are one incident; a consequence is linked to its
cause; the console prints one line when an incident opens and one when it closes."""

import torch
import torch.nn.functional as F

from monitor_test_helpers import classification_task, mlp
from stablelab.monitor import Event, IncidentTracker, Monitor, Policy


def _event(kind, step, severity="warning", **data):
    return Event(kind, step, severity, f"{kind} at {step}", data)


def test_consecutive_events_are_one_incident_with_start_peak_end():
    tracker = IncidentTracker(gap=10, link=10)
    opened, closed = tracker.add([_event("loss_spike", s, loss=v) for s, v in [(5, 2.0), (7, 9.0), (12, 3.0)]])
    assert len(opened) == 1 and not closed
    [incident] = tracker.incidents
    assert (incident.start, incident.peak, incident.end, len(incident.events)) == (5, 7, 12, 3)
    # 11 steps later than its end (> gap): the next event opens a new incident and closes the old
    opened, closed = tracker.add([_event("loss_spike", 23, loss=1.0)])
    assert closed == [incident] and incident.closed and len(opened) == 1
    assert len(tracker.incidents) == 2


def test_a_loss_spike_after_a_gradient_spike_is_its_consequence():
    tracker = IncidentTracker(gap=10, link=10)
    tracker.add([_event("grad_spike", 100, ratio=50.0), _event("skip", 100, "info", cause="grad_spike")])
    tracker.add([_event("loss_spike", 103, loss=4.0)])
    _, closed = tracker.add([_event("update_ratio", 200)])     # far away: no cause
    grad, loss, update = tracker.incidents
    assert closed == [grad, loss]
    assert [a.kind for a in grad.actions] == ["skip"]
    assert loss.cause == "grad_spike" and update.cause is None
    assert tracker.close_all() == [update]


def test_console_prints_one_line_per_incident_opening_and_closing(capsys):
    """A run whose loss is non-finite for 30 consecutive steps: 30 events, one incident, two lines."""
    x, y, g = classification_task()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = Monitor(model, optimizer, sinks=("console",), incident_gap=20)
    for step in range(100):
        index = torch.randint(0, len(x), (32,), generator=g)
        loss = F.cross_entropy(model(x[index]), y[index]) * (float("nan") if 40 <= step < 70 else 1.0)
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
    monitor.close()
    err = capsys.readouterr().err
    assert len([e for e in monitor.events if e.kind == "nonfinite"]) == 30
    [incident] = monitor.incidents
    assert (incident.kind, incident.start, incident.end, incident.closed) == ("nonfinite", 40, 69, True)
    lines = [line for line in err.splitlines() if "stablelab monitor" in line]
    assert len(lines) == 2, err
    assert "incident opened" in lines[0] and "nonfinite" in lines[0]
    assert "incident closed" in lines[1] and "steps 40-69" in lines[1]
