"""The decisions' intervals against simulated truths: the LR sensitivity keeps its level whichever
way the per-LR errors run."""

import math

import numpy as np
import pytest

from stablelab.analysis import decisions as dec
from stablelab.analysis.calibration import Calibration, z_for
from stablelab.analysis.proxy import lr_sensitivity

LRS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
INIT = 5.5
TRUTH = [2.4 * math.exp(0.03 * (i - 3) ** 2) for i in range(len(LRS))]  # a U over log LR, minimum at 1e-2
HALF = 0.08  # the calibrated half-width, log space


def _raw(losses):
    return {"lrs": LRS, "per_lr": [{"lr": lr, "init": INIT, "final_loss": v, "attn_logit": 10.0,
                                    "diverged_fraction": 0.0} for lr, v in zip(LRS, losses)]}


def _cals():
    return {q: Calibration(q, 0.9, 0.0, HALF, 28, True) for q in ("final_loss", "attn_logit")}


def _coverage(forecast_noisy: bool, interval, trials: int = 200) -> float:
    """Share of trials whose true LR sensitivity falls inside the interval. forecast_noisy: the
    forecast is the truth times per-LR errors; otherwise the truth is the forecast times them."""
    rng = np.random.default_rng(7)
    sigma = HALF / z_for(0.9)
    hits = 0
    for t in range(trials):
        errors = np.exp(sigma * rng.standard_normal(len(LRS)))
        point, truth = (np.array(TRUTH) * errors, TRUTH) if forecast_noisy else (TRUTH, np.array(TRUTH) * errors)
        lo, hi = interval(_raw(point), t)
        hits += lo <= lr_sensitivity(list(truth), [INIT] * len(LRS)) <= hi
    return hits / trials


def _percentile(raw, seed):
    """The draws' own 5-95% range (the interval before `sensitivity_interval`), computed from the
    same draws as `decisions` makes."""
    captured = {}
    real = dec.sensitivity_interval
    try:
        dec.sensitivity_interval = lambda s, lo, hi: captured.setdefault("q", (float(lo), float(hi)))
        dec.decisions(raw, _cals(), 0.9, seed)
    finally:
        dec.sensitivity_interval = real
    return captured["q"]


def _shipped(raw, seed):
    return tuple(dec.decisions(raw, _cals(), 0.9, seed)["lr_sensitivity"]["interval"])


@pytest.mark.parametrize("forecast_noisy", [True, False])
def test_lr_sensitivity_interval_keeps_its_level_whichever_way_the_errors_run(forecast_noisy):
    """Truths of a U-shaped loss-vs-LR curve with 4.9% log-normal per-LR errors (the 8% half-width of
    a 90% interval): the interval holds the true sensitivity in at least 85% of 200 trials both when
    the forecast scatters around the truth and when the truth scatters around the forecast."""
    assert _coverage(forecast_noisy, _shipped) >= 0.85


def test_the_draws_percentile_range_alone_misses_when_the_forecast_is_the_noisy_one():
    """The reason for the union: when the forecast carries the per-LR errors, its minimum is already
    too low, the draws push the sensitivity further up, and their percentile range misses the truth
    more often than its 10% (the OLMo-2 check's 2 of 4, docs/proxy.md): 76% of these trials, where the
    union holds 93%; with the truth scattering around the forecast the percentile range is right (89%)."""
    assert _coverage(True, _percentile) < 0.8 <= _coverage(False, _percentile)


def test_sensitivity_interval_by_hand():
    # percentile [0.17, 0.50] around 0.21: basic bootstrap [-0.08, 0.25]; the union, floored at 0
    assert dec.sensitivity_interval(0.21, 0.17, 0.50) == pytest.approx((0.0, 0.50))
    # a left-skewed range: the basic interval's upper end 2 x 0.3 - 0.1 = 0.5 passes q_hi = 0.35
    assert dec.sensitivity_interval(0.3, 0.1, 0.35) == pytest.approx((0.1, 0.5))
    # the point always inside
    assert dec.sensitivity_interval(0.2, 0.25, 0.3) == pytest.approx((0.1, 0.3))
