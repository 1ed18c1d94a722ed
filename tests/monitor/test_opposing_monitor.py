"""The Monitor's opposing-signals slot: per-example losses of a fixed probe batch, the tracker's keys
in the rows, and the `opposing_signals` detector firing inside an ordinary training loop."""

import json

import pytest
import torch
import torch.nn.functional as F

from stablelab.data.synthetic import opposing_signals_classification
from stablelab.errors import UsageError
from stablelab.monitor import Monitor
from stablelab.monitor.opposing import OpposingSignalTracker, probe_losses
from stablelab.nn import MLP


def _one_hot_mse(outputs, targets):
    return 0.5 * (outputs - F.one_hot(targets, outputs.shape[1]).to(outputs.dtype)).pow(2).sum(1)


def _planted(steps: int, lr: float, monitor_kwargs: dict, log_dir=None):
    """Full-batch GD on the study's planted opposing-groups data (docs/dynamics.md section 4), with a
    Monitor, and beside it a tracker run by hand on the same model: the expectation for the rows."""
    x, y, _ = opposing_signals_classification(n=400, d=20, outlier_scale=4.0, seed=0)
    x = x.float()
    torch.manual_seed(0)
    model = MLP(20, 2, hidden=(64, 64), bias=True, activation="tanh")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    monitor = Monitor(model, optimizer, log_dir=log_dir, sinks=(), opposing_batch=(x, y),
                      opposing_loss=_one_hot_mse, **monitor_kwargs)
    by_hand = OpposingSignalTracker(lambda: _one_hot_mse(model(x), y), n_examples=400)
    expected = {}
    for step in range(steps):
        if step % monitor.opposing_every == 0:
            expected[step] = by_hand.observe(step)
        loss = _one_hot_mse(model(x), y).mean()
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
    monitor.close()
    return monitor, expected


def test_rows_carry_the_trackers_keys_and_the_detector_fires_in_the_oscillating_regime(tmp_path):
    monitor, expected = _planted(700, 0.5, {"opposing_every": 5, "policy": {}}, log_dir=tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    with_keys = {r["step"]: r for r in rows if "opposing_signals_correlation" in r}
    # every 5th step once the window of 10 readings is full, nowhere else
    assert sorted(with_keys) == [s for s, v in expected.items() if v is not None]
    for step, row in with_keys.items():
        assert row["opposing_signals_correlation"] == pytest.approx(expected[step]["opposing_signals_correlation"],
                                                                   abs=1e-9)
        assert row["opposing_signals_amplitude"] == pytest.approx(expected[step]["opposing_signals_amplitude"],
                                                                 rel=1e-9)
    fired = [e for e in monitor.events if e.kind == "opposing_signals"]
    # docs/dynamics.md: after the spike at step ~325 the planted groups oscillate in antiphase
    assert fired and any(e.step > 325 for e in fired)
    for event in fired:  # each firing is a row over the thresholds, as the rows themselves show
        row = with_keys[event.step]
        assert row["opposing_signals_correlation"] <= -0.8 and row["opposing_signals_amplitude"] >= 3


def test_a_small_lr_run_moves_every_example_together_and_stays_quiet():
    monitor, expected = _planted(300, 0.02, {"opposing_every": 5})
    assert not [e for e in monitor.events if e.kind == "opposing_signals"]
    assert any(v is not None for v in expected.values())


def test_probe_losses_leave_the_model_in_training_mode_and_consume_no_randomness():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    batch = (torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
    losses = probe_losses(model, batch)
    state = torch.random.get_rng_state()
    values = losses()
    assert torch.equal(torch.random.get_rng_state(), state) and model.training
    with torch.no_grad():
        model.eval()
        reference = F.cross_entropy(model(batch[0]).double(), batch[1], reduction="none")
    assert torch.allclose(values, reference)


def test_probe_losses_of_a_sequence_model_are_per_sequence_means():
    logits = torch.randn(3, 5, 7)
    targets = torch.randint(0, 7, (3, 5))

    class Fixed(torch.nn.Module):
        def forward(self, _x):
            return logits

    losses = probe_losses(Fixed(), (None, targets))
    per_token = F.cross_entropy(logits.reshape(-1, 7).double(), targets.reshape(-1), reduction="none")
    assert torch.allclose(losses(), per_token.reshape(3, 5).mean(1))


@pytest.mark.parametrize("kwargs, message", [
    ({"opposing_every": 5}, "opposing_batch"),
    ({"opposing_every": -1, "opposing_batch": (torch.zeros(2, 4), torch.zeros(2))}, "opposing_every"),
    ({"opposing_every": 5, "opposing_batch": (torch.zeros(2, 4), torch.zeros(2)), "opposing_loss": "hinge"},
     "opposing_loss"),
])
def test_bad_opposing_arguments_are_usage_errors(kwargs, message):
    model = torch.nn.Linear(4, 2)
    with pytest.raises(UsageError, match=message):
        Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), sinks=(), **kwargs)


def test_sharpness_until_limits_the_scheduled_check_to_the_first_steps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    loss_fn = lambda m, batch: F.mse_loss(m(batch[0]), batch[1])  # noqa: E731
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    from monitor_test_helpers import RowSink, full_batch_steps

    sink = RowSink()
    monitor = Monitor(model, optimizer, sinks=[sink], sync_every=1, sharpness_every=2, sharpness_until=7,
                      sharpness_loss_fn=loss_fn, sharpness_batch=(x, y))
    full_batch_steps(model, optimizer, monitor, loss_fn, (x, y), 12)
    checked = [r["step"] for r in sink.row_list if "sharpness_lambda_max" in r]
    assert checked == [2, 4, 6]
    with pytest.raises(UsageError, match="sharpness_until"):
        Monitor(model, optimizer, sinks=(), sharpness_until=-3)
