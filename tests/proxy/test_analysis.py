import math

import pytest

from stablelab.analysis.proxy import (best_lr, first_divergent_lr, fit_attention_logit_growth,
                                      largest_stable_lr, lr_sensitivity)


def test_lr_sensitivity_by_hand():
    # Paper's definition: mean over LRs of min(L, L_init) - min L. NaN counts as L_init.
    # capped = [3.0, 2.5, 2.0, 5.0] (NaN -> 5.0), best = 2.0 -> mean([1.0, 0.5, 0.0, 3.0]) = 1.125
    assert lr_sensitivity([3.0, 2.5, 2.0, float("nan")], 5.0) == pytest.approx(1.125)


def test_lr_sensitivity_caps_losses_above_init():
    # 7.0 is above L_init 5.0 so it counts as 5.0: mean([0, 3]) = 1.5
    assert lr_sensitivity([2.0, 7.0], 5.0) == pytest.approx(1.5)
    # a model that fails everywhere scores 0 (the paper's caveat)
    assert lr_sensitivity([float("inf"), float("nan")], 5.0) == 0.0


def test_best_and_stable_lrs():
    lrs = [1e-3, 1e-2, 1e-1, 3e-1]
    assert best_lr(lrs, [3.0, 2.0, float("nan"), 2.5]) == 1e-2
    assert largest_stable_lr(lrs, [False, False, True, True]) == 1e-2
    assert first_divergent_lr(lrs, [False, False, True, True]) == 1e-1
    # a divergence in the middle with a stable LR above it: no "diverges from" boundary
    assert first_divergent_lr(lrs, [False, True, False, False]) is None
    assert largest_stable_lr(lrs, [True] * 4) is None


def test_logit_fit_recovers_a_power_law():
    # z = 3 * N^0.5 exactly: the log-log line extrapolates to 3 * (1e8)^0.5 = 3e4
    sizes = [1e5, 4e5, 1.6e6]
    fit = fit_attention_logit_growth(sizes, [3 * s**0.5 for s in sizes], lr=0.1)
    assert fit.degree == 1
    assert fit.predict(1e8) == pytest.approx(3e4, rel=1e-9)


def test_logit_fit_needs_two_finite_points():
    assert fit_attention_logit_growth([1e5, 2e5], [10.0, math.nan], lr=0.1) is None
