"""The every-step numbers: the Python-float path (CPU) against the device-tensor path, on the same
sequences, and both against the rule worked by hand; the fused sampled-step logit statistics
against the separate signal functions."""

from __future__ import annotations

import math

import pytest
import torch

from stablelab.monitor.step_numbers import FAST, DeviceStepNumbers, HostStepNumbers, step_numbers
from stablelab.signals import (logit_statistics, output_log_z_stats, softmax_collapse_fraction,
                               softmax_collapse_lost_fraction)


def _sequence(seed: int):
    """Per-tensor norms of 4 tensors over 80 steps: noise around 1, a 1000x spike, a NaN step, an
    inf step, a tensor without gradient (norm 0) for a while, a lasting 20x shift, losses."""
    g = torch.Generator().manual_seed(seed)
    steps = []
    for t in range(80):
        norms = (1 + 0.1 * torch.randn(4, generator=g)).abs()
        if t == 25:
            norms = norms * 1000
        if t == 30:
            norms[1] = math.nan
        if t == 33:
            norms[2] = math.inf
        if 5 <= t < 12:
            norms[3] = 0.0
        if t >= 45:
            norms = norms * 20
        loss = None if t == 7 else (math.inf if t == 40 else 2.0 / (1 + t))
        steps.append((norms.float(), loss))
    return steps


@pytest.mark.parametrize("with_second_moment", [False, True])
def test_host_and_device_paths_agree_on_every_number(with_second_moment):
    numels = [10, 200, 3000, 7]
    kwargs = dict(numels=numels, device=torch.device("cpu"), outlier_factor=10.0, outlier_warmup=20)
    host, device = HostStepNumbers(**kwargs), DeviceStepNumbers(**kwargs)
    v_mean = torch.tensor([1e-2, 0.0, 3e-4, 5e-1])
    outliers = []
    for t, (norms, loss) in enumerate(_sequence(0)):
        if with_second_moment and t % 10 == 0:
            host.set_second_moments(v_mean)
            device.set_second_moments(v_mean)
        if t == 50:  # a rollback or a moment reset forgets the spike history
            host.reset()
            device.reset()
        loss_arg = torch.tensor(loss) if isinstance(loss, float) and t % 2 else loss
        a, b = host.step(norms, loss_arg), device.step(norms, loss_arg)
        assert isinstance(a, list) and all(isinstance(x, float) for x in a)
        a = torch.tensor(a, dtype=torch.float32)
        assert a.shape == b.shape == (len(FAST),) and b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True, msg=f"step {t}")
        outliers.append(bool(a[FAST.index("outlier")]))
    # the hand-worked reading of the sequence: the 1000x step after warm-up is an outlier; the
    # lasting 20x shift (20 > 10) is an outlier on each of its first 15 steps, which do not enter
    # the typical norm, and the 16th (patience) is taken as the new level: nothing after it
    flagged = [t for t, o in enumerate(outliers) if o]
    assert flagged == [25] + list(range(45, 60))


def test_host_numbers_by_hand():
    """Global norm, non-finite flag, spike ratio against mean(v), typical norm and the coherent
    ratio for two steps of two tensors, worked by hand."""
    n = HostStepNumbers([4, 9], torch.device("cpu"), outlier_factor=10.0, outlier_warmup=0)
    n.set_second_moments(torch.tensor([0.25, 1.0]))
    first = dict(zip(FAST, n.step(torch.tensor([3.0, 4.0]), 1.5)))
    assert first["grad_norm"] == pytest.approx(5.0) and first["loss"] == 1.5 and first["nonfinite"] == 0
    # mean(g^2) / mean(v): (9/4) / 0.25 = 9 and (16/9) / 1 = 1.78: the first tensor, ratio 9
    assert first["spike_ratio_max"] == pytest.approx(9.0) and first["spike_index"] == 0
    assert math.isnan(first["grad_norm_typical"]) and first["grad_norm_ratio_min"] == 1.0  # nothing seen
    second = dict(zip(FAST, n.step(torch.tensor([6.0, 4.0]), 1.0)))
    assert second["grad_norm_typical"] == pytest.approx(5.0)  # the EMA of log norms starts at step 0's
    assert second["grad_norm_ratio_min"] == pytest.approx(1.0)  # tensor 2 did not grow: min(6/3, 4/4)
    assert second["outlier"] == 0  # sqrt(52) / 5 = 1.44 < 10
    third = dict(zip(FAST, n.step(torch.tensor([math.nan, 4.0]), 1.0)))
    assert third["nonfinite"] == 1 and third["outlier"] == 0


@pytest.mark.parametrize("cls", [HostStepNumbers, DeviceStepNumbers])
def test_flagged_steps_leave_the_typical_norm_where_it_was(cls):
    """Three 100x steps in a row: each is judged against the level before the first (the typical
    norm does not move during them), so each is an outlier; a 5x step (above the suspect level
    log 4 set by grad_spike) is not an outlier but is not learned from either; a 1.5x step is."""
    n = cls([4, 9], torch.device("cpu"), outlier_factor=50.0, outlier_warmup=3)
    base = torch.tensor([3.0, 4.0])  # global norm 5
    for _ in range(5):
        n.step(base, 1.0)
    n.set_suspect_level(math.log(4.0))
    read = lambda values: dict(zip(FAST, [float(x) for x in values]))  # noqa: E731
    for _ in range(3):
        row = read(n.step(base * 100, 1.0))
        assert row["outlier"] == 1 and row["trusted"] == 0
        assert row["grad_norm_typical"] == pytest.approx(5.0)
        assert row["grad_norm_ratio_min"] == pytest.approx(100.0)
    row = read(n.step(base * 5, 1.0))
    assert (row["outlier"], row["trusted"]) == (0, 0)
    assert read(n.step(base * 1.5, 1.0))["grad_norm_typical"] == pytest.approx(5.0)
    # the 1.5x step entered the EMA of log norms: log 5 + 0.1 log 1.5
    assert read(n.step(base, 1.0))["grad_norm_typical"] == pytest.approx(5.0 * 1.5 ** 0.1)


def test_the_one_norm_rule_equals_the_host_rule_on_one_tensor():
    """GlobalNormNumbers (stablelab diagnose's global norm) against HostStepNumbers([1]) on a
    sequence with spikes, NaN, inf, zero, a lasting shift and shared suspect levels."""
    from stablelab.monitor.step_numbers import GlobalNormNumbers, TrustRule

    trust = TrustRule(factor=12.0, coherent=7.0, patience=5)
    host = HostStepNumbers([1], torch.device("cpu"), 10.0, 4, trust)
    one = GlobalNormNumbers(10.0, 4, trust)
    g = torch.Generator().manual_seed(3)
    for t in range(120):
        norm = float((1 + 0.2 * torch.randn((), generator=g)).abs())
        norm *= {30: 1000.0, 31: 1000.0, 50: 5.0}.get(t, 1.0) * (30.0 if t >= 80 else 1.0)
        norm = {40: math.nan, 41: math.inf, 45: 0.0}.get(t, norm)
        loss = None if t == 7 else (math.nan if t == 60 else 1.0 / (1 + t))
        if t % 10 == 0:
            level = math.log(3.0 + t / 100)
            host.set_suspect_level(level)
            one.set_suspect_level(level)
        full = dict(zip(FAST, host.step(torch.tensor([norm]), loss)))
        typical, ratio, outlier, trusted = one.read(norm, loss)
        expected = (full["grad_norm_typical"], full["grad_norm_ratio_min"], bool(full["outlier"]), bool(full["trusted"]))
        assert (typical, ratio, outlier, trusted) == pytest.approx(expected, nan_ok=True), f"step {t}"


def test_auto_chooses_host_floats_on_the_cpu():
    assert isinstance(step_numbers([1], torch.device("cpu"), 10.0, 5), HostStepNumbers)
    assert isinstance(step_numbers([1], torch.device("cpu"), 10.0, 5, where="device"), DeviceStepNumbers)
    assert isinstance(step_numbers([1], torch.device("meta"), 10.0, 5), DeviceStepNumbers)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_logit_statistics_equal_the_separate_functions(dtype):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 20, 50, generator=g) * 3
    logits[0, :5, 7] += 40   # collapsed in every precision
    logits[1, :5, 3] += 9    # collapsed in bf16 with ~1e-4 of mass outside the top class
    mean_z, max_z = output_log_z_stats(logits)
    expected = torch.stack([mean_z, max_z, softmax_collapse_fraction(logits, dtype, as_tensor=True),
                            softmax_collapse_lost_fraction(logits, dtype, 1e-4)])
    torch.testing.assert_close(logit_statistics(logits, dtype, 1e-4), expected, rtol=1e-5, atol=1e-6)
    assert expected[2] > 0  # the planted rows collapse
    if dtype == torch.float32:
        assert expected[3] == 0  # a float32 collapse never counts as lost
    if dtype == torch.bfloat16:
        assert expected[3] > 0  # bf16 rounds material mass away in some rows
