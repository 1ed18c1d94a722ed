"""Detectors on synthetic rows, against hand-worked thresholds."""

import math
import statistics

import pytest

from stablelab.errors import UsageError
from stablelab.monitor import DETECTORS, build_detectors, default_settings
from stablelab.monitor.detectors import (AttnLogitGrowth, EdgeOfStability, GradOutlier, GradSpike, LossRise,
                                        LossSpike, SoftmaxCollapse, UpdateRatio)


def test_registry_holds_the_issue_kinds():
    assert set(DETECTORS) == {"nonfinite", "grad_outlier", "loss_spike", "loss_rise", "grad_spike",
                              "attn_logit_growth", "logit_divergence", "softmax_collapse", "update_ratio",
                              "eps_floor", "edge_of_stability", "opposing_signals"}
    assert default_settings()["loss_spike"]["z"] == 6.0
    with pytest.raises(UsageError):
        build_detectors({"no_such": {}})
    with pytest.raises(UsageError):
        build_detectors({"loss_spike": {"no_such_setting": 1}})
    with pytest.raises(UsageError, match="must be a number"):
        build_detectors({"loss_spike": {"z": "6"}})       # a threshold of the wrong type
    with pytest.raises(UsageError, match=">= 0"):
        build_detectors({"grad_spike": {"factor": -1.0}})
    assert "eps_floor" not in {d.kind for d in build_detectors({"eps_floor": False})}


def _mad_sigma(values):
    median = statistics.median(values)
    return median, 1.4826 * statistics.median(abs(v - median) for v in values)


def test_loss_spike_uses_a_robust_scale_of_log_loss_and_a_floor():
    history = [1.0, 1.2, 0.8, 1.1, 0.9, 1.0, 1.05, 0.95]
    logs = [math.log(x) for x in history]
    median, sigma = _mad_sigma(logs)                       # hand formula: median, 1.4826 MAD
    threshold = math.exp(median + 3.0 * sigma)

    def fresh():
        detector = LossSpike(window=8, min_values=8, z=3.0, floor=0.0)
        for step, loss in enumerate(history):
            assert detector.check(step, {"loss": loss}) == []
        return detector

    assert fresh().check(8, {"loss": threshold * 0.999}) == []
    [event] = fresh().check(8, {"loss": threshold * 1.001})
    assert event.kind == "loss_spike" and event.step == 8
    assert event.data["z"] == pytest.approx(3.0 + math.log(1.001) / sigma, rel=1e-6)
    # One hard batch near zero loss: 0.05 against a level of 0.01 is 5x, robust z is huge, but the
    # excess 0.04 is below floor x the loss at the start (0.25 x 2.3): not an instability.
    detector = LossSpike(window=8, min_values=8, z=3.0, floor=0.25)
    for step, loss in enumerate([2.3] * 4 + [0.01, 0.011, 0.009, 0.0105]):
        detector.check(step, {"loss": loss})
    for step, loss in enumerate([0.01, 0.011, 0.009, 0.0105] * 2, start=8):
        detector.check(step, {"loss": loss})
    assert detector.check(16, {"loss": 0.05}) == []
    assert len(detector.check(17, {"loss": 2.0})) == 1      # a corrupted batch: excess 2.0 > 0.575


def test_loss_rise_fires_on_a_sustained_rise_before_the_loss_doubles():
    detector = LossRise(window=4, rise=0.2, floor=0.05, cooldown=0)
    losses = [1.0] * 8 + [1.0 * 1.05 ** k for k in range(1, 20)]
    fired = [step for step, loss in enumerate(losses) if detector.check(step, {"loss": loss})]
    # the median of the last 4 passes 1.2 x its lowest (1.0) when 1.05^k (k-1.5 centred) > 1.2
    first = fired[0]
    window = sorted(losses[first - 3:first + 1])
    assert (window[1] + window[2]) / 2 > 1.2 and losses[first] < 2.0


def test_grad_spike_against_the_typical_norm_and_the_second_moment():
    detector = GradSpike(warmup=20, factor=5.0, ratio=1000.0)
    assert detector.check(5, {"grad_norm": 100.0, "grad_norm_typical": 1.0}) == []   # warm-up
    assert detector.check(25, {"grad_norm": 4.9, "grad_norm_typical": 1.0, "spike_ratio_max": 999.0}) == []
    [event] = detector.check(26, {"grad_norm": 5.1, "grad_norm_typical": 1.0, "spike_ratio_max": 1.0})
    assert event.severity == "warning" and event.data["ratio"] == pytest.approx(5.1)
    [event] = detector.check(27, {"grad_norm": 1.0, "grad_norm_typical": 1.0, "spike_ratio_max": 1001.0,
                                  "spike_param": "w"})
    assert "w" in event.message
    # an outlier is grad_outlier's (the guard skips it), not a second warning here
    assert detector.check(28, {"grad_norm": 1e3, "grad_norm_typical": 1.0, "outlier": True}) == []
    [event] = GradOutlier().check(28, {"grad_norm": 1e3, "grad_norm_typical": 1.0, "outlier": True})
    assert event.severity == "critical" and event.data["ratio"] == pytest.approx(1e3)


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


def test_update_ratio_against_its_median_and_cooldown():
    detector = UpdateRatio(factor=4.0, window=10, min_values=5, threshold=1.0, cooldown=50)
    for step, value in enumerate([0.01, 0.012, 0.011, 0.009, 0.01]):
        assert detector.check(step, {"update_ratio_max": value}) == []
    # median of the window = 0.01 (hand), so 0.039 passes; it enters the window, whose median
    # becomes (0.01 + 0.011) / 2 = 0.0105: 0.041 < 4 x 0.0105 passes too; then the median of 7 is 0.011
    assert detector.check(5, {"update_ratio_max": 0.039}) == []
    assert detector.check(6, {"update_ratio_max": 0.041}) == []
    [event] = detector.check(7, {"update_ratio_max": 0.045})   # > 4 x 0.011
    assert event.data["median"] == pytest.approx(0.011)     # 7 values kept: the median is the 4th
    assert detector.check(30, {"update_ratio_max": 0.5}) == []    # cooling down
    assert len(detector.check(58, {"update_ratio_max": 0.5})) == 1   # 51 steps after the last event
    # a linear warm-up (ratio proportional to the step) never reaches 4x its median
    warmup = UpdateRatio(factor=4.0, window=100, min_values=5, cooldown=0)
    assert not any(warmup.check(t, {"update_ratio_max": 1e-4 * (t + 1)}) for t in range(100))


def test_softmax_collapse_warns_only_when_precision_loses_material_mass():
    detector = SoftmaxCollapse(threshold=0.01, cooldown=0)
    [info] = detector.check(0, {"softmax_collapse_fraction": 0.5, "softmax_collapse_lost_fraction": 0.0})
    assert info.severity == "info"
    [warning] = detector.check(1, {"softmax_collapse_fraction": 0.5, "softmax_collapse_lost_fraction": 0.3})
    assert warning.severity == "warning"


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


def test_target_false_alarm_rate_reads_the_calibration_curve():
    from stablelab.monitor.calibration import CURVES, calibration_curves, replay, thresholds_for

    curves = {"loss_spike": {"setting": "z", "points": [
        {"value": 3.0, "false_warnings_per_1k": 2.0, "recall": 0.9},
        {"value": 6.0, "false_warnings_per_1k": 0.04, "recall": 0.8},
        {"value": 10.0, "false_warnings_per_1k": 0.0, "recall": 0.5}]}}
    # 2 per 1k = 2e-3 per step; 0.04 per 1k = 4e-5 per step
    assert thresholds_for(1e-2, curves) == {"loss_spike": {"z": 3.0}}
    assert thresholds_for(5e-5, curves) == {"loss_spike": {"z": 6.0}}
    assert thresholds_for(1e-6, curves) == {"loss_spike": {"z": 10.0}}
    for bad in (0, 1, 1.5, -0.1, "0.01", True, float("nan")):
        with pytest.raises(UsageError, match="false-alarm rate"):
            thresholds_for(bad, curves)
    # the shipped table covers the calibrated detectors, and a stricter rate never loosens them
    assert set(CURVES) >= {"grad_spike", "loss_spike", "update_ratio"}
    from stablelab.monitor.calibration import HEALTHY_STEPS, smallest_supported_rate

    floor = smallest_supported_rate(HEALTHY_STEPS)
    assert floor == pytest.approx(3.689 / HEALTHY_STEPS)
    with pytest.raises(UsageError, match="can support"):
        thresholds_for(floor / 2)
    assert thresholds_for(1e-6, curves, healthy_steps=None) == {"loss_spike": {"z": 10.0}}
    with pytest.raises(UsageError, match="can support"):
        thresholds_for(1e-6, curves, healthy_steps=1000)
    strict, loose = thresholds_for(floor), thresholds_for(1e-2)
    for kind, setting in strict.items():
        (name, value), = setting.items()
        assert value >= loose[kind][name]
    # replay by hand: z = 3 on a window of 1.0s with one 10.0 (MAD 0 -> scale floor 1e-3)
    rows = [{"step": t, "loss": 1.0 + 0.01 * (t % 3)} for t in range(40)] + [{"step": 40, "loss": 10.0}]
    assert replay("loss_spike", {"z": 3.0, "floor": 0.1}, rows) == [40]
    result = calibration_curves([rows[:40]], [(40, 5, rows)])
    assert result["healthy_steps"] == 40 and result["faults"] == 1
    assert result["curves"]["loss_spike"]["points"][0]["recall"] == 1.0


def test_monitor_takes_a_target_false_alarm_rate():
    import torch

    from stablelab.monitor import Monitor
    from stablelab.monitor.calibration import thresholds_for

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer, sinks=(), target_false_alarm_rate=2e-4)
    chosen = thresholds_for(2e-4)
    for detector in monitor.detectors:
        for name, value in chosen.get(detector.kind, {}).items():
            assert getattr(detector, name) == value
    monitor.close()
    with pytest.raises(UsageError, match="false-alarm rate"):
        Monitor(model, optimizer, sinks=(), target_false_alarm_rate=5)
    with pytest.raises(UsageError, match="can support"):
        Monitor(model, optimizer, sinks=(), target_false_alarm_rate=1e-6)
