"""The production anchors of stablelab.bench.anchors, each against a hand-worked expectation from the
official rule, and ZClip against the real zclip 1.0.0 package on a tiny model."""

import math
import sys

import pytest
import torch

from stablelab.bench.anchors import (
    ANCHORS,
    AnchorRule,
    Decision,
    LightningSpikeRule,
    LlmFoundryRule,
    MegatronRule,
    OlmoCoreRule,
    ZClipRule,
    build_anchor,
)
from stablelab.errors import UsageError


def feed(rule, losses=None, grads=None, start=0):
    """Decisions for a stream of losses and/or grad norms."""
    n = len(losses if losses is not None else grads)
    out = []
    for i in range(n):
        out.append(rule.update(start + i, None if losses is None else losses[i], None if grads is None else grads[i]))
    return out


# --------------------------------------------------------------------------------------- registry


def test_registry_names_actions_and_sources():
    assert set(ANCHORS) == {"olmo_core", "megatron", "llm_foundry", "lightning", "zclip"}
    actions = {name: cls.action for name, cls in ANCHORS.items()}
    assert actions == {"olmo_core": "skip", "megatron": None, "llm_foundry": None, "lightning": "stop", "zclip": "clip"}
    for name, cls in ANCHORS.items():
        assert issubclass(cls, AnchorRule) and cls.name == name
        assert cls.source and "\n" not in cls.source
        rule = build_anchor(name)
        assert isinstance(rule, cls)
        assert rule.update(0, 1.0, 1.0) == Decision(False)


def test_build_anchor_applies_settings():
    rule = build_anchor("olmo_core", rolling_interval_length=32, sigma_factor=3)
    assert rule.settings == {"rolling_interval_length": 32, "sigma_factor": 3.0, "min_values": None}
    assert build_anchor("zclip", max_grad_norm=None).max_grad_norm is None


@pytest.mark.parametrize(
    "name, settings, needle",
    [
        ("nope", {}, "available: lightning, llm_foundry, megatron, olmo_core, zclip"),
        ("olmo_core", {"window": 3}, "no setting 'window'"),
        ("olmo_core", {"rolling_interval_length": 0}, "rolling_interval_length"),
        ("olmo_core", {"min_values": 500}, "min_values"),
        ("megatron", {"threshold": -1}, "threshold"),
        ("llm_foundry", {"patience": 1.5}, "patience"),
        ("lightning", {"mode": "avg"}, "mode"),
        ("lightning", {"rtol": "2"}, "rtol"),
        ("zclip", {"alpha": 1.0}, "alpha"),
        ("zclip", {"clip_option": "median"}, "clip_option"),
    ],
)
def test_build_anchor_usage_errors(name, settings, needle):
    with pytest.raises(UsageError) as info:
        build_anchor(name, **settings)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_non_finite_and_missing_values_never_crash():
    stream = [1.0, 1.1, 0.9] * 50 + [math.nan, math.inf, -math.inf, None, 1e300, 1.0, -5.0] * 3 + [1.0] * 150
    for name in ANCHORS:
        rule = build_anchor(name)
        for step, x in enumerate(stream):
            d = rule.update(step, x, x)
            assert isinstance(d, Decision)
            assert d.clip_to is None or isinstance(d.clip_to, float)


# --------------------------------------------------------------------------------------- OLMo-core

# 63 previous values [1, 2, 3] * 21: mean 2, Bessel-corrected variance (21 + 21) / 62.
HIST63 = [1.0, 2.0, 3.0] * 21
THR63 = 2.0 + 6.0 * math.sqrt(42.0 / 62.0)  # 6.938...


@pytest.mark.parametrize("factor, flagged", [(1 + 1e-9, True), (1 - 1e-9, False)])
def test_olmo_core_six_sigma_on_the_64th_value(factor, flagged):
    rule = OlmoCoreRule()
    assert not any(d.flagged for d in feed(rule, HIST63))
    d = rule.update(63, THR63 * factor, None)
    assert d.flagged is flagged and d.clip_to is None
    if flagged:
        assert "loss" in d.reason


def test_olmo_core_inactive_before_64_values():
    rule = OlmoCoreRule()
    feed(rule, HIST63[:62])
    assert not rule.update(62, 1e6, None).flagged  # the 63rd value is not checked


def test_olmo_core_is_one_sided():
    rule = OlmoCoreRule()
    feed(rule, HIST63)
    assert not rule.update(63, -100.0, None).flagged  # far below mean - 6 sigma: not skipped


def test_olmo_core_flagged_values_stay_in_the_window():
    rule = OlmoCoreRule()
    feed(rule, HIST63)
    assert rule.update(63, 1e6, None).flagged
    # the 1e6 is now in the window: mean ~ 15627, std ~ 125000, so 10 (> THR63) is not flagged
    assert 10.0 > THR63
    assert not rule.update(64, 10.0, None).flagged


def test_olmo_core_window_is_the_last_128_values():
    rule = OlmoCoreRule()
    feed(rule, [1000.0] * 100 + [1.0, 3.0] * 64)  # the 1000s have left the 128-value window
    thr = 2.0 + 6.0 * math.sqrt(128.0 / 127.0)  # mean 2, variance 128 / 127
    assert rule.update(228, thr * (1 + 1e-9), None).flagged
    rule2 = OlmoCoreRule()
    feed(rule2, [1000.0] * 100 + [1.0, 3.0] * 64)
    assert not rule2.update(228, thr * (1 - 1e-9), None).flagged


def test_olmo_core_grad_norm_check_and_constant_loss():
    rule = OlmoCoreRule()
    feed(rule, [1.0] * 63, HIST63)  # constant loss: std 0, loss == mean passes (0 <= 0)
    d = rule.update(63, 1.0, 8.0)
    assert d.flagged and "grad norm" in d.reason and "loss" not in d.reason
    rule2 = OlmoCoreRule()
    feed(rule2, [1.0] * 63, HIST63)
    assert not rule2.update(63, 1.0, 6.9).flagged
    assert rule2.update(64, 1.0 + 1e-9, 1.0).flagged  # constant window: anything above it fails


def test_olmo_core_nan_is_skipped_and_left_out_of_the_statistics():
    """OLMo-core's current get_step_factor: std_mean over the finite values only."""
    rule = OlmoCoreRule()
    feed(rule, HIST63)
    assert rule.update(63, math.nan, None).flagged
    assert rule.update(64, math.inf, 1.0).flagged
    assert not rule.update(65, 2.0, None).flagged  # the NaN and inf in the window do not blind it
    assert rule.update(66, 1e6, None).flagged


def test_olmo_core_checks_from_the_64th_value_and_clips_at_one_in_production():
    assert OlmoCoreRule()._active_at == 64 and OlmoCoreRule.production_clip == 1.0


# --------------------------------------------------------------------------------------- Megatron

HIST100 = [1.0, 2.0, 3.0, 2.0] * 25  # first 100 values, max 3


def test_megatron_ten_times_the_max_of_the_first_100():
    rule = MegatronRule()
    assert not any(d.flagged for d in feed(rule, HIST100, HIST100))
    assert not rule.update(100, 29.999, 29.999).flagged
    d = rule.update(101, 30.0, None)  # >= 10 x 3
    assert d.flagged and "spiky loss" in d.reason
    d = rule.update(102, 1.0, -30.0)  # |grad norm|
    assert d.flagged and "large grads" in d.reason and "spiky" not in d.reason


def test_megatron_reference_is_frozen_after_calibration():
    rule = MegatronRule()
    feed(rule, HIST100)
    assert not rule.update(100, 29.0, None).flagged
    assert rule.update(101, 30.0, None).flagged  # 29 did not raise the reference


def test_megatron_calibration_values_are_never_flagged():
    rule = MegatronRule()
    seq = list(HIST100)
    seq[49] = 1e9
    assert not any(d.flagged for d in feed(rule, seq))
    assert not rule.update(100, 9.9e9, None).flagged
    assert rule.update(101, 1e10, None).flagged


def test_megatron_nan_check_is_fatal_by_default():
    rule = MegatronRule()
    feed(rule, [1.0] * 10)
    d = rule.update(10, math.nan, 1.0)
    assert d.flagged and d.stop and "non-finite loss" in d.reason
    assert rule.update(11, 1.0, math.inf).stop
    assert not rule.update(12, 1.0, 1.0).flagged
    assert MegatronRule.production_clip == 1.0


def test_megatron_spike_checks_ignore_non_finite_values():
    rule = MegatronRule(check_nan=False)
    feed(rule, [1.0] * 99)
    assert not rule.update(99, math.nan, None).flagged  # not counted
    assert not rule.update(100, 5.0, None).flagged  # the 100th sample: max becomes 5
    assert not rule.update(101, math.inf, None).flagged
    assert not rule.update(102, 49.9, None).flagged
    assert rule.update(103, 50.0, None).flagged


def test_megatron_checks_can_be_switched_off():
    rule = MegatronRule(check_loss=False)
    feed(rule, HIST100, HIST100)
    assert not rule.update(100, 1e6, 1.0).flagged
    assert rule.update(101, 1e6, 1e6).flagged


# --------------------------------------------------------------------------------------- llm-foundry


def test_llm_foundry_fires_on_the_fifth_consecutive_outlier():
    rule = LlmFoundryRule()
    feed(rule, [1.0] * 100)
    # window means 1.00, 1.09, 1.18, ...: 10 stays >= 2 x mean
    out = feed(rule, [10.0] * 6, start=100)
    assert [d.flagged for d in out] == [False, False, False, False, True, True]
    assert "5 consecutive" in out[4].reason


def test_llm_foundry_four_outliers_then_reset():
    rule = LlmFoundryRule()
    feed(rule, [1.0] * 100)
    out = feed(rule, [10.0] * 4 + [1.0] + [10.0] * 4, start=100)
    assert not any(d.flagged for d in out)


@pytest.mark.parametrize("loss, flagged", [(2.0, True), (1.999, False)])
def test_llm_foundry_outlier_is_at_least_twice_the_mean(loss, flagged):
    rule = LlmFoundryRule(patience=0)
    feed(rule, [1.0] * 100)
    assert rule.update(100, loss, None).flagged is flagged


def test_llm_foundry_needs_a_full_window():
    rule = LlmFoundryRule(patience=0)
    assert not any(d.flagged for d in feed(rule, [1.0] * 99 + [50.0]))  # 100th loss: window has 99


@pytest.mark.parametrize("first_high, flagged", [(11.0, True), (10.0, False)])
def test_llm_foundry_high_losses(first_high, flagged):
    # losses 1..100 are 1.0; 101..200 alternate 11, 1 (so no 5 consecutive outliers)
    seq = [1.0] * 100 + [11.0, 1.0] * 50
    seq[100] = first_high  # 10.0 is not above the cap: 49 instead of 50 high losses
    out = feed(LlmFoundryRule(), seq)
    assert not any(d.flagged for d in out[:199])  # high-loss check starts at batch 200
    # at batch 200 the window is losses 100..199: 50 (or 49) of them > 10
    assert out[199].flagged is flagged
    if flagged:
        assert "high losses: 50/100" in out[199].reason


def test_llm_foundry_nan_is_not_an_outlier_and_resets():
    rule = LlmFoundryRule()
    feed(rule, [1.0] * 100)
    out = feed(rule, [10.0] * 4 + [math.nan] + [10.0] * 4, start=100)
    assert not any(d.flagged for d in out)


# --------------------------------------------------------------------------------------- Lightning


@pytest.mark.parametrize("loss, flagged", [(3.0, True), (2.999, False)])
def test_lightning_rtol_two_means_three_times_the_running_mean(loss, flagged):
    rule = LightningSpikeRule()
    assert not any(d.flagged for d in feed(rule, [1.0] * 10))
    assert rule.update(10, loss, None).flagged is flagged


def test_lightning_window_is_the_last_ten_accepted_losses():
    for loss, flagged in ((7.4, False), (7.5, True)):
        rule = LightningSpikeRule()
        feed(rule, [1.0] * 10 + [2.5] * 10)  # 2.5 is accepted (|2.5 - 1| < 2); the 1.0s leave the window
        # |7.4 - 2.5| = 4.9 < 2 * 2.5 (a cumulative mean, 1.75, would fire); |7.5 - 2.5| = 5 fires
        assert rule.update(20, loss, None).flagged is flagged
    for loss, flagged in ((8.9, False), (9.0, True)):
        rule = LightningSpikeRule()
        feed(rule, [1.0] * 10 + [2.5] * 10 + [7.4])  # 7.4 was accepted: mean (9 * 2.5 + 7.4) / 10 = 2.99
        # |8.9 - 2.99| = 5.91 < 5.98; |9 - 2.99| = 6.01 >= 5.98
        assert rule.update(21, loss, None).flagged is flagged


def test_lightning_spikes_are_not_added_to_the_statistics():
    rule = LightningSpikeRule()
    feed(rule, [1.0] * 10)
    assert rule.update(10, 5.0, None).flagged
    assert not rule.update(11, 2.9, None).flagged  # mean still 1.0
    rule2 = LightningSpikeRule()
    feed(rule2, [1.0] * 10)
    rule2.update(10, 5.0, None)
    assert rule2.update(11, 3.0, None).flagged


def test_lightning_warmup():
    assert not LightningSpikeRule().update(0, 1e9, None).flagged  # batch 0 is never checked
    rule = LightningSpikeRule(warmup=3)
    assert not any(d.flagged for d in feed(rule, [1.0, 1.0, 1e6]))  # batch 2 < warmup 3
    rule = LightningSpikeRule(warmup=1)
    assert [d.flagged for d in feed(rule, [1.0, 1.0, 1e6])] == [False, False, True]


def test_lightning_mode_min_ignores_drops_mode_max_does_not():
    low = LightningSpikeRule(mode="min", rtol=0.5)
    feed(low, [10.0] * 5)
    assert not low.update(5, 4.0, None).flagged  # an improvement in mode min
    high = LightningSpikeRule(mode="max", rtol=0.5)
    feed(high, [10.0] * 5)
    assert high.update(5, 4.0, None).flagged  # |4 - 10| = 6 >= 0.5 * 10


def test_lightning_atol_and_rtol_must_both_hold():
    for loss, flagged in ((4.0, False), (5.999, False), (6.0, True)):
        rule = LightningSpikeRule(atol=5.0)
        feed(rule, [1.0] * 10)
        # 4.0: rtol holds (3 >= 2) but atol does not (3 < 5); 6.0: both hold (5 >= 5)
        assert rule.update(10, loss, None).flagged is flagged


def test_lightning_non_finite():
    rule = LightningSpikeRule()
    feed(rule, [1.0] * 10)
    assert rule.update(10, math.nan, None).flagged
    assert not rule.update(11, 2.9, None).flagged  # the NaN was not added
    lax = LightningSpikeRule(finite_only=False)
    feed(lax, [1.0] * 10)
    assert not lax.update(10, math.nan, None).flagged
    assert lax.update(11, math.inf, None).flagged
    assert not lax.update(12, 2.9, None).flagged


class _Strategy:
    root_device = torch.device("cpu")

    def barrier(self):
        pass

    def reduce_boolean_decision(self, decision, all=True):
        return decision


class _Fabric:
    strategy = _Strategy()
    global_rank = 0


def test_lightning_matches_the_real_spike_detection(tmp_path):
    """Cross-check with lightning's own SpikeDetection (importing lightning takes a few seconds)."""
    spike = pytest.importorskip("lightning.fabric.utilities.spike")
    gen = torch.Generator().manual_seed(3)
    losses = (2.0 + 0.3 * torch.randn(300, generator=gen)).tolist()
    for i in (40, 41, 90, 150, 151, 152, 220):
        losses[i] *= 3.5
    losses[120] = float("nan")
    for settings in ({}, {"window": 5, "rtol": 0.4}, {"atol": 0.5, "rtol": None, "mode": "min"}):
        real = spike.SpikeDetection(exclude_batches_path=tmp_path, **settings)
        ours = LightningSpikeRule(**settings)
        real_flags, our_flags = [], []
        for i, loss in enumerate(losses):
            try:
                real.on_train_batch_end(_Fabric(), torch.tensor(loss), None, i)
                real_flags.append(False)
            except spike.TrainingSpikeException:
                real_flags.append(True)
            our_flags.append(ours.update(i, loss, None).flagged)
        assert our_flags == real_flags
        assert any(real_flags)


# --------------------------------------------------------------------------------------- ZClip


def _import_zclip():
    """zclip's __init__ imports lightning when installed (~5 s); its non-FSDP path never uses it."""
    if "lightning" in sys.modules:
        return pytest.importorskip("zclip")
    sys.modules["lightning"] = None  # makes `import lightning` fail fast, inside zclip only
    try:
        return pytest.importorskip("zclip")
    finally:
        del sys.modules["lightning"]


def test_zclip_hand_worked_first_spike():
    rule = ZClipRule(max_grad_norm=None)
    assert not any(d.flagged or d.clip_to for d in feed(rule, grads=[1.0] * 25))  # mean 1, var 0
    d = rule.update(25, None, 1.5)  # z = 0.5 / 1e-6; threshold = 1 + 2.5 * 0 / eta = 1
    assert d.flagged and d.clip_to == 1.0
    d = ZClipRule().update(0, None, 3.0)  # default max_grad_norm=1.0 clips during warm-up
    assert not d.flagged and d.clip_to == 1.0


def _norms(base, spikes, n=70, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = (base * (1 + 0.1 * torch.randn(n, generator=gen))).abs().tolist()
    for i, v in spikes.items():
        out[i] = v
    return out


ZCLIP_CASES = [
    ({}, _norms(0.3, {10: 2.0, 30: 0.9, 31: 0.8, 40: 3.0, 50: 0.6, 60: 1.5})),
    ({"max_grad_norm": None}, _norms(3.0, {5: 9.0, 30: 30.0, 31: 25.0, 45: 8.0, 60: 300.0})),
    ({"max_grad_norm": None, "clip_option": "mean"}, _norms(3.0, {30: 30.0, 45: 8.0, 60: 300.0})),
    ({"max_grad_norm": 5.0, "mode": "percentile"}, _norms(3.0, {30: 30.0, 45: 4.5, 60: 300.0})),
    ({"max_grad_norm": None, "skip_update_on_spike": True, "clip_factor": 0.7, "warmup_steps": 10},
     _norms(3.0, {30: 30.0, 31: 30.0, 32: 30.0, 60: 300.0})),
]


@pytest.mark.parametrize("settings, norms", ZCLIP_CASES)
def test_zclip_matches_the_real_package(settings, norms):
    zclip = _import_zclip()
    model = torch.nn.Linear(4, 3)
    params = list(model.parameters())
    real = zclip.ZClip(**settings)
    ours = ZClipRule(**settings)
    gen = torch.Generator().manual_seed(1)
    flagged = 0
    for step, norm in enumerate(norms):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        scale = norm / torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
        for p, g in zip(params, grads):
            p.grad = (g * scale).to(p.dtype)
        total = real.step(model)  # the package's own pre-clip norm
        after = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
        d = ours.update(step, None, total)
        if d.clip_to is None:
            assert after == pytest.approx(total, rel=1e-6), step
        else:
            assert after == pytest.approx(d.clip_to, rel=1e-5), step
            assert after < total
        flagged += d.flagged
        if real.initialized:  # same EMA state, float for float
            assert (ours._mean, ours._var) == (real.mean, real.var), step
    assert flagged >= 2
