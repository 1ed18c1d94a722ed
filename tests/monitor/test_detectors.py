"""Detectors on synthetic rows, against hand-worked thresholds."""

import math
import statistics

import pytest

from stablelab.errors import UsageError
from stablelab.monitor import DETECTORS, build_detectors, default_settings
from stablelab.monitor.detectors import AttnLogitGrowth, EdgeOfStability, GradSpike, LossSpike, UpdateRatio


def test_registry_holds_the_issue_kinds():
    assert set(DETECTORS) == {"nonfinite", "loss_spike", "grad_spike", "attn_logit_growth",
                              "logit_divergence", "softmax_collapse", "update_ratio", "eps_floor",
                              "edge_of_stability"}
    assert default_settings()["loss_spike"]["z"] == 6.0
    with pytest.raises(UsageError):
        build_detectors({"no_such": {}})
    with pytest.raises(UsageError):
        build_detectors({"loss_spike": {"no_such_setting": 1}})
    assert "eps_floor" not in {d.kind for d in build_detectors({"eps_floor": False})}


def test_loss_spike_uses_window_mean_and_sigma():
    detector = LossSpike(window=8, min_values=8, z=3.0, min_ratio=1.0)
    history = [1.0, 1.2, 0.8, 1.1, 0.9, 1.0, 1.05, 0.95]
    for step, loss in enumerate(history):
        assert detector.check(step, {"loss": loss}) == []
    threshold = statistics.mean(history) + 3.0 * statistics.stdev(history)  # hand formula
    assert detector.check(8, {"loss": threshold * 0.999}) == []
    detector = LossSpike(window=8, min_values=8, z=3.0, min_ratio=1.0)
    for step, loss in enumerate(history):
        detector.check(step, {"loss": loss})
    [event] = detector.check(8, {"loss": threshold * 1.001})
    assert event.kind == "loss_spike" and event.step == 8
    assert event.data["threshold"] == pytest.approx(threshold)


def test_grad_spike_warmup_and_threshold():
    detector = GradSpike(warmup=20, ratio=1000.0)
    assert detector.check(5, {"spike_ratio_max": 1e6}) == []      # in warm-up
    assert detector.check(25, {"spike_ratio_max": 999.0}) == []
    [event] = detector.check(26, {"spike_ratio_max": 1001.0, "spike_param": "w"})
    assert event.severity == "warning" and "w" in event.message


def test_attention_trend_predicts_the_crossing():
    # max logit = 10^(2 + step/1000): log-linear, reaches 1e4 at step 2000 exactly.
    detector = AttnLogitGrowth(level=1e9, critical=1e4, trend_points=6, trend_min_level=100.0,
                               horizon=1000, cooldown=0)
    events = []
    for step in range(0, 1100, 100):
        events += detector.check(step, {"attn_logit_max": 10 ** (2 + step / 1000), "attn_logit_layer": 0})
    assert events, "growth towards 1e4 within the horizon should be flagged"
    first = events[0]
    assert first.step == 1000                     # first step with crossing - step <= 1000
    assert first.data["predicted_step"] == 2000
    critical = AttnLogitGrowth().check(0, {"attn_logit_max": 2e4})
    assert critical[0].severity == "critical"
    # cool-down silences repeats, not an escalation from warning to critical
    detector = AttnLogitGrowth(cooldown=100)
    assert detector.check(0, {"attn_logit_max": 2e3})[0].severity == "warning"
    assert detector.check(10, {"attn_logit_max": 3e3}) == []
    assert detector.check(20, {"attn_logit_max": 2e4})[0].severity == "critical"
    assert detector.check(30, {"attn_logit_max": 3e4}) == []


def test_update_ratio_and_cooldown():
    detector = UpdateRatio(threshold=0.1, cooldown=50)
    assert detector.check(0, {"update_ratio_max": 0.05}) == []
    assert len(detector.check(1, {"update_ratio_max": 0.2})) == 1
    assert detector.check(30, {"update_ratio_max": 0.2}) == []    # cooling down
    assert len(detector.check(52, {"update_ratio_max": 0.2})) == 1


def test_edge_of_stability_uses_two_over_lr():
    detector = EdgeOfStability(factor=0.9)
    lr = 0.1
    assert detector.check(10, {"sharpness_lambda_max": 17.0, "sharpness_gd_threshold": 2 / lr}) == []
    [event] = detector.check(20, {"sharpness_lambda_max": 19.0, "sharpness_gd_threshold": 2 / lr})
    assert event.data["ratio"] == pytest.approx(19.0 / 20.0)
    # Adam: preconditioned sharpness against 38/lr when present
    assert detector.check(30, {"sharpness_adam_ratio": 0.5, "sharpness_lambda_max": 1e9,
                               "sharpness_gd_threshold": 20.0}) == []
    assert math.isfinite(event.data["threshold"])
