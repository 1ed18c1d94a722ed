"""Opposing signals: the pure functions, the tracker and the detector on hand-written inputs."""

import math

import torch

from stablelab.monitor.detectors import DETECTORS, build_detectors
from stablelab.monitor.opposing import OpposingSignalTracker
from stablelab.signals import opposing_groups, per_example_losses


def test_per_example_losses_by_hand():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    losses = per_example_losses(logits, torch.tensor([0, 1]))
    assert abs(float(losses[0]) - math.log(2)) < 1e-12
    assert abs(float(losses[1]) - (math.log(math.exp(2) + 1) - 0.0)) < 1e-12
    mse = per_example_losses(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 3.0]]), "mse")
    assert torch.allclose(mse, torch.tensor([2.5, 4.5], dtype=torch.float64))


def _history(opposite: bool = True):
    # examples 0-2 oscillate one way, 3-5 the other way (or the same way), 6-19 barely move
    t = torch.arange(12, dtype=torch.float64)
    wave = torch.where(t % 2 == 0, 1.0, -1.0)
    g = torch.Generator().manual_seed(0)
    history = 1.0 + 0.001 * torch.randn(12, 20, generator=g, dtype=torch.float64)
    history[:, 0:3] += 0.5 * wave[:, None]
    history[:, 3:6] += (-0.5 if opposite else 0.5) * wave[:, None]
    return history


def test_opposing_groups_splits_two_planted_opposite_groups():
    out = opposing_groups(_history(), top_k=6)
    assert sorted([sorted(out["group_a"]), sorted(out["group_b"])]) == [[0, 1, 2], [3, 4, 5]]
    assert out["correlation"] < -0.99 and out["opposing"]
    assert out["amplitude"] > 3        # the six move ~1.0 a step, the rest ~0.001
    assert out["oscillation"] == 1.0   # the wave flips sign at every step


def test_a_steady_trade_off_is_opposed_but_does_not_oscillate():
    # examples 0-2 are learned ever faster, 3-5 given up ever faster (changes grow, never flip sign)
    t = torch.arange(12, dtype=torch.float64)
    history = torch.ones(12, 20, dtype=torch.float64) + 1e-4 * torch.randn(12, 20, generator=torch.Generator().manual_seed(1),
                                                                             dtype=torch.float64)
    history[:, 0:3] -= 0.01 * t[:, None] ** 2
    history[:, 3:6] += 0.01 * t[:, None] ** 2
    out = opposing_groups(history, top_k=6)
    assert out["correlation"] < -0.99 and out["oscillation"] == 0.0


def test_groups_that_move_together_are_not_opposing():
    out = opposing_groups(_history(opposite=False), top_k=6)
    assert not (out["correlation"] < -0.5)


def test_detector_is_registered_and_inert_without_its_signal():
    assert "opposing_signals" in DETECTORS
    detector = DETECTORS["opposing_signals"]()
    assert detector.check(5, {"loss": 1.0, "grad_norm": 2.0}) == []
    row = {"opposing_signals_correlation": -0.95, "opposing_signals_amplitude": 9.0, "opposing_signals_oscillation": 1.0}
    assert detector.check(5, {**row, "opposing_signals_amplitude": 1.0}) == []
    assert detector.check(5, {**row, "opposing_signals_correlation": -0.2}) == []
    assert detector.check(5, {**row, "opposing_signals_oscillation": 0.1}) == []   # a steady trade-off
    events = detector.check(5, row)
    assert len(events) == 1 and events[0].kind == "opposing_signals"
    assert any(d.kind == "opposing_signals" for d in build_detectors({"opposing_signals": {"opposition": 0.5}}))


def test_tracker_reads_a_fixed_subset_and_reports_after_a_full_window():
    history = _history()
    calls = {"i": 0}

    def losses():
        row = history[calls["i"]]
        calls["i"] += 1
        return row

    tracker = OpposingSignalTracker(losses, n_examples=20, subset=20, window=5, top_k=6)
    rows = [tracker.observe(step) for step in range(6)]
    assert rows[:4] == [None] * 4
    assert rows[4]["opposing_signals_correlation"] < -0.99
    assert sorted(tracker.last_groups["group_a"] + tracker.last_groups["group_b"]) == [0, 1, 2, 3, 4, 5]
    sub = OpposingSignalTracker(lambda: torch.arange(50.0), n_examples=50, subset=10, window=3)
    assert len(sub.index) == 10 and torch.equal(sub.index, OpposingSignalTracker(lambda: None, 50, 10, 3).index)
