"""Forecasts, backtest and calibrated intervals on synthetic studies with known laws and noise."""

import json
import math

import numpy as np
import pytest

from stablelab.analysis.calibration import binary_set, conformal_quantile, coverage, grid_set, is_inside
from stablelab.analysis.extrapolation import extrapolate, fit_group_losses, fit_loss, lr_shift, saturating
from stablelab.analysis.prediction import accuracy, forecast, validate

WIDTHS = (32, 64, 128, 256)
SIZES = {32: 1e5, 64: 4e5, 128: 1.6e6, 256: 6.4e6, 512: 2.56e7}
INIT = 5.5
LRS = (1e-3, 1e-2, 1e-1)
POWER = {1e-3: (9.0, -0.05), 1e-2: (8.0, -0.06), 1e-1: (2.0, 0.05)}  # lr 0.1 gets worse with size


def _rows(law, widths=WIDTHS, seeds=1, noise=0.0, rng=None, variants=("baseline",), logit=None):
    """Result rows of a synthetic study: final_loss = law(lr, N) x exp(noise Z)."""
    rng = rng or np.random.default_rng(0)
    logit = logit or (lambda lr, n: 10 * lr * n ** 0.5)
    rows = []
    for v in variants:
        for w in widths:
            for lr in LRS:
                for s in range(seeds):
                    n = SIZES[w]
                    rows.append({"run_id": f"{v}_{w}_{lr}_{s}", "variant": v, "optimizer": "adamw", "depth": 2,
                                 "tag": "", "width": w, "lr": lr, "seed": s, "n_params": n, "init_loss": INIT,
                                 "final_loss": law(lr, n) * math.exp(noise * rng.standard_normal()),
                                 "early": logit(lr, n) * math.exp(noise * rng.standard_normal())})
    return rows


def _early(rows):
    return {r["run_id"]: r["early"] for r in rows}


def _power(lr, n):
    a, b = POWER[lr]
    return a * n ** b


# ------------------------------------------------------------------------------------------- curves

def test_extrapolate_is_a_line_and_one_point_is_a_constant():
    assert extrapolate([0, 1], [1, 3], 2) == pytest.approx(5)
    assert extrapolate([1], [7], 5) == 7


@pytest.mark.parametrize("model", ["power_law", "log_quadratic"])
def test_a_power_law_is_extrapolated_exactly_by_the_curves_that_contain_it(model):
    ns = [1e5, 4e5, 1.6e6]
    assert fit_loss(model, ns, [9.0 * n ** -0.05 for n in ns], 6.4e6) == pytest.approx(9.0 * 6.4e6 ** -0.05, rel=1e-9)


def test_saturating_recovers_an_offset_power_law():
    ns = np.array([1e5, 4e5, 1.6e6, 6.4e6])
    truth = lambda n: 1.7 + 40.0 * n ** -0.3  # noqa: E731; alpha 0.3 lies on the fit's grid
    value = saturating(np.log10(ns), truth(ns), math.log10(2.56e7))
    assert value == pytest.approx(truth(2.56e7), rel=1e-6)


def test_lr_shift_recovers_a_shifted_curve_and_turns_where_a_power_law_cannot():
    """log L = F(log10 lr + a x) + b x with F cubic: the fit reads the larger model's losses exactly,
    including the low-LR side getting worse relative to the power law through each LR."""
    a, b = 0.55, -0.02
    coef = [0.9, 0.08, 0.05, 0.01]  # F(u) = 0.9 + 0.08 u + 0.05 u^2 + 0.01 u^3 around the optimum

    def law(lr, n):
        x = math.log10(n) - 6.0
        u = math.log10(lr) + 2.0 + a * x
        return math.exp(sum(c * u ** k for k, c in enumerate(coef)) + b * x)

    lrs = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    ns = [SIZES[w] for w in WIDTHS]
    table = [[law(lr, n) for lr in lrs] for n in ns]
    got = fit_group_losses("lr_shift", ns, lrs, table, [[True] * len(lrs)] * len(ns), SIZES[512])
    assert got == pytest.approx([law(lr, SIZES[512]) for lr in lrs], rel=1e-6)
    xs, us = np.meshgrid(np.log10(ns), np.log10(lrs), indexing="ij")
    _, shift = lr_shift(xs.ravel(), us.ravel(), np.log(np.asarray(table)).ravel())
    assert shift == pytest.approx(a, abs=1e-3)


# ------------------------------------------------------------------------------------------- calibration

def test_conformal_quantile_by_hand():
    scores = [0.1 * k for k in range(1, 11)]  # n = 10: ceil(11 x 0.9) = 10th smallest
    assert conformal_quantile(scores, 0.9) == pytest.approx(1.0)
    assert conformal_quantile(scores, 0.5) == pytest.approx(0.6)  # ceil(11 x 0.5) = 6th
    assert conformal_quantile(scores[:8], 0.9) is None  # ceil(9 x 0.9) = 9 > 8: cannot promise 90%


def test_binary_and_grid_sets_by_hand():
    assert binary_set(0.01, 0.9) == [0, 0] and binary_set(0.99, 0.9) == [1, 1] and binary_set(0.5, 0.9) == [0, 1]
    lrs = [1e-3, 3e-3, 1e-2, 3e-2]
    assert grid_set(lrs, [0.06, 0.55, 0.3, 0.09], 0.9, 3e-3) == [3e-3, 3e-2]  # 0.55 + 0.3 + 0.09 = 0.94
    assert grid_set(lrs, [0.05, 0.6, 0.3, 0.05], 0.9, 3e-3) == [3e-3, 1e-2]  # 0.6 + 0.3 reaches 0.9
    assert grid_set(lrs, [0.0, 1.0, 0.0, 0.0], 0.9, 3e-3) == [1e-3, 3e-3]  # never a single grid value
    assert is_inside(0.3, [0.3, None]) and not is_inside(0.1, [0.3, None])


def test_two_widths_cannot_be_calibrated_and_say_so_with_wide_intervals():
    rows = _rows(_power, widths=(32, 64))
    fc = forecast(rows, _early(rows), {2: SIZES[512]})
    assert fc["backtest"] is None and "not calibrated" in fc["calibration_note"]
    for p in fc["points"]:
        assert p["calibrated"] is False
        if p["quantity"] == "diverged":  # a yes/no prediction set, not an interval
            continue
        lo, hi = p["interval"]
        assert lo != hi
        if p["quantity"] == "final_loss":
            assert hi / lo >= 1.25 ** 2 * (1 - 1e-9) or hi == INIT


def test_backtest_coverage_arithmetic_by_hand_on_a_built_sweep():
    """Three widths, power law fixed: the backtest predicts width 128 from 32 and 64; recompute each
    final-loss prediction by hand, its inside flag from its interval, and the coverage counts."""
    rng = np.random.default_rng(3)
    rows = _rows(_power, widths=(32, 64, 128), noise=0.02, rng=rng, variants=("a", "b", "c", "d"))
    fc = forecast(rows, _early(rows), {2: SIZES[256]}, models={"final_loss": "power_law", "attn_logit": "paper"})
    bt = fc["backtest"]
    assert bt["width"] == 128 and bt["from_widths"] == [32, 64]
    by_cell = {(r["variant"], r["width"], r["lr"]): r["final_loss"] for r in rows}

    def residual(v, lr):  # log(observed / predicted) at width 128, the line through widths 32 and 64
        return math.log(by_cell[(v, 128, lr)]) - (2 * math.log(by_cell[(v, 64, lr)]) - math.log(by_cell[(v, 32, lr)]))

    losses = [p for p in bt["points"] if p["quantity"] == "final_loss"]
    assert len(losses) == 4 * len(LRS)
    for p in losses:
        y = [math.log(by_cell[(p["variant"], w, p["lr"])]) for w in (32, 64)]
        slope = (y[1] - y[0]) / (math.log10(SIZES[64]) - math.log10(SIZES[32]))
        raw = math.exp(y[1] + slope * (math.log10(SIZES[128]) - math.log10(SIZES[64])))
        assert p["observed"] == by_cell[(p["variant"], 128, p["lr"])]
        lo, hi = p["interval"]
        assert lo < p["predicted"] < hi and p["inside"] == (lo <= p["observed"] <= hi)
        # the point is the raw power law times the other three variants' median residual at this LR
        # (leave one group out)
        others = [residual(v, p["lr"]) for v in "abcd" if v != p["variant"]]
        assert p["predicted"] == pytest.approx(min(raw * math.exp(float(np.median(others))), INIT), rel=1e-9)
    cov = bt["coverage"]
    for q in ("final_loss", "attn_logit", "diverged", "best_lr", "largest_stable_lr", "lr_sensitivity"):
        mine = [p for p in bt["points"] if p["quantity"] == q]
        assert cov[q] == {"inside": sum(p["inside"] for p in mine), "total": len(mine),
                          "fraction": sum(p["inside"] for p in mine) / len(mine)}
    assert cov["all"]["total"] == len(bt["points"]) == 4 * (3 * len(LRS) + 3)
    # the target's calibration: per-LR medians of the residuals, and the conformal quantile of each
    # residual's distance from the median of the OTHER variants at its LR (jackknife+)
    cal = fc["calibration"]["final_loss"]
    assert cal["bias"] == pytest.approx(float(np.median([residual(v, lr) for v in "abcd" for lr in LRS])), abs=1e-12)
    for lr in LRS:
        assert cal["bias_by_lr"][f"{lr:g}"] == pytest.approx(float(np.median([residual(v, lr) for v in "abcd"])))
    scores = [abs(residual(v, lr) - float(np.median([residual(u, lr) for u in "abcd" if u != v])))
              for v in "abcd" for lr in LRS]
    assert cal["half_width"] == pytest.approx(conformal_quantile(scores, 0.9), abs=1e-12)


@pytest.mark.parametrize("level", [0.9])
def test_calibrated_intervals_cover_fresh_draws_at_their_level(level):
    """Synthetic sweeps with known noise (log-normal, 3% per run, four variants of the same laws):
    the 90% intervals of the final loss and the attention logit at width 512 cover 85-95% of fresh
    draws of the truth plus the same noise."""
    inside = total = 0
    for trial in range(30):
        rng = np.random.default_rng(100 + trial)
        rows = _rows(_power, noise=0.03, rng=rng, variants=("a", "b", "c", "d", "e", "f", "g", "h"))
        fc = forecast(rows, _early(rows), {2: SIZES[512]}, level=level,
                      models={"final_loss": "power_law", "attn_logit": "paper"}, seed=trial)
        for p in fc["points"]:
            if p["quantity"] == "final_loss":
                truth = _power(p["lr"], SIZES[512])
            elif p["quantity"] == "attn_logit":
                truth = 10 * p["lr"] * SIZES[512] ** 0.5
            else:
                continue
            draw = truth * math.exp(0.03 * rng.standard_normal())
            inside += is_inside(draw, p["interval"])
            total += 1
    assert 0.85 <= inside / total <= 0.95, inside / total


# ------------------------------------------------------------------------------------------- decisions

def test_divergence_is_a_probability_and_a_stable_top_lr_is_a_bound():
    def law(lr, n):  # lr 0.1 crosses the loss at init between widths 256 and 512
        return _power(lr, n) if lr < 0.1 else 1.48 * n ** 0.08

    assert law(0.1, SIZES[256]) < INIT < law(0.1, SIZES[512])
    rows = _rows(law, variants=("a", "b", "c"))
    fc = forecast(rows, _early(rows), {2: SIZES[512]}, models={"final_loss": "power_law", "attn_logit": "paper"})
    div = {p["lr"]: p for p in fc["points"] if p["quantity"] == "diverged" and p["variant"] == "a"}
    assert div[0.1]["probability"] > 0.9 and div[0.1]["predicted"] == 1
    assert div[1e-3]["probability"] < 0.05 and div[1e-3]["interval"] == [0, 0]
    stable = next(p for p in fc["points"] if p["quantity"] == "largest_stable_lr" and p["variant"] == "a")
    # the largest stable LR is 1e-2; its set never collapses to one grid LR (it stands for up to 0.1)
    assert stable["predicted"] == 1e-2 and stable["interval"] == [1e-2, 1e-1] and stable["bound"] is None

    rows = _rows(_power, variants=("a", "b", "c"))
    fc = forecast(rows, _early(rows), {2: SIZES[512]}, models={"final_loss": "power_law", "attn_logit": "paper"})
    stable = next(p for p in fc["points"] if p["quantity"] == "largest_stable_lr" and p["variant"] == "a")
    assert stable["predicted"] == 0.1 and stable["interval"] == [0.1, None] and stable["bound"] == "at least"
    best = next(p for p in fc["points"] if p["quantity"] == "best_lr" and p["variant"] == "a")
    truths = {lr: _power(lr, SIZES[512]) for lr in LRS}
    assert best["predicted"] == min(truths, key=truths.get)
    assert sum(best["odds"].values()) == pytest.approx(1.0)


def test_accuracy_by_hand():
    points = [{"quantity": "final_loss", "predicted": 2.0, "observed": 2.1},
              {"quantity": "final_loss", "predicted": 2.0, "observed": 1.9},
              {"quantity": "final_loss", "predicted": 4.0, "observed": 4.4},
              {"quantity": "best_lr", "optimizer": "adamw", "variant": "a", "depth": 2, "setting": "",
               "predicted": 1e-2, "observed": 1e-3}]
    observed = {("adamw", "a", 2, ""): {"lrs": [1e-3, 1e-2, 1e-1], "per_lr": [
        {"lr": 1e-3, "final_loss": 2.0}, {"lr": 1e-2, "final_loss": 2.05}, {"lr": 1e-1, "final_loss": 3.0}]}}
    acc = accuracy(points, observed)
    assert acc["final_loss_median_abs_error"] == pytest.approx(0.05)  # |e| = 0.05, 0.05, 0.1
    assert acc["final_loss_median_signed_error"] == pytest.approx(0.05)  # 0.05, -0.05, 0.1
    assert acc["best_lr_exact"] == 0 and acc["best_lr_within_one"] == 1
    assert acc["best_lr_median_regret"] == pytest.approx(0.025)


def test_validation_on_a_subset_of_lrs_checks_only_per_lr_points():
    rows = _rows(_power, variants=("a", "b", "c"))
    held = [dict(r, run_id="h" + r["run_id"]) for r in _rows(_power, widths=(512,), variants=("a", "b", "c"))
            if r["lr"] != 1e-3]
    early = {**_early(rows), **_early(held)}
    v = validate(rows, held, early, {2: SIZES[512]}, models={"final_loss": "power_law", "attn_logit": "paper"})
    assert {p["quantity"] for p in v["points"]} == {"final_loss", "attn_logit", "diverged"}
    assert {p["lr"] for p in v["points"]} == {1e-2, 1e-1}
    assert coverage(v["points"])["all"]["total"] == 3 * 2 * 3
    # exact laws, no noise: every point inside, and the errors are zero
    assert all(p["inside"] for p in v["points"])
    assert v["accuracy"]["final_loss_median_abs_error"] == pytest.approx(0.0, abs=1e-9)


def test_a_combination_is_the_geometric_mean_of_its_curves_forecasts():
    """"mean:a,b" forecasts exp(mean(log a, log b)) at every LR, worked from each curve on its own;
    a curve that cannot be fitted at an LR is left out there; an unknown curve is refused."""
    sizes = [1e5, 4e5, 1.6e6]
    lrs = [1e-3, 1e-2]
    losses = [[4.0, 3.5], [3.4, 3.1], [3.0, 2.9]]
    usable = [[True, True]] * 3
    a = fit_group_losses("power_law", sizes, lrs, losses, usable, 6.4e6)
    b = fit_group_losses("constant", sizes, lrs, losses, usable, 6.4e6)
    both = fit_group_losses("mean:power_law,constant", sizes, lrs, losses, usable, 6.4e6)
    assert both == pytest.approx([math.sqrt(x * y) for x, y in zip(a, b)], rel=1e-12)
    assert b == pytest.approx([3.0, 2.9])  # the largest width's loss, by hand
    with pytest.raises(ValueError):
        fit_group_losses("mean:power_law,wiggly", sizes, lrs, losses, usable, 6.4e6)


def test_the_checks_seed_noise_per_lr_by_hand():
    """validation["seed_spread"]: per LR at the check width, the pooled within-cell sd of log final
    loss (sum of squared deviations from each cell's mean over sum of (runs - 1)), worked by hand on
    two variants x two or three seeds; a diverged run is left out; one seed gives nothing."""
    rows = _rows(_power, variants=("a", "b"))
    losses = {("a", 1e-2): [2.0, 2.2, 2.1], ("b", 1e-2): [3.0, 3.3], ("a", 1e-1): [4.0, 4.4], ("b", 1e-1): [5.0, 9.0]}
    held = []
    for (v, lr), values in losses.items():
        for s, loss in enumerate(values):
            held.append({"run_id": f"h{v}{lr}{s}", "variant": v, "optimizer": "adamw", "depth": 2, "tag": "",
                         "width": 512, "lr": lr, "seed": s, "n_params": SIZES[512], "init_loss": INIT,
                         "final_loss": loss, "early": 10.0})
    early = {**_early(rows), **_early(held)}
    v = validate(rows, held, early, {2: SIZES[512]}, models={"final_loss": "power_law", "attn_logit": "paper"})

    def ss(values):
        logs = np.log(values)
        return float(np.sum((logs - logs.mean()) ** 2))

    at_01 = ss([2.0, 2.2, 2.1]) + ss([3.0, 3.3])      # 3 dof
    at_1 = ss([4.0, 4.4])                              # 1 dof; b's 9.0 is above the loss at init (5.5)
    spread = v["seed_spread"]
    assert spread["0.01"] == {"sd": pytest.approx(math.sqrt(at_01 / 3), rel=1e-12), "dof": 3}
    assert spread["0.1"] == {"sd": pytest.approx(math.sqrt(at_1 / 1), rel=1e-12), "dof": 1}
    assert spread["all"] == {"sd": pytest.approx(math.sqrt((at_01 + at_1) / 4), rel=1e-12), "dof": 4}
    assert list(spread) == ["0.01", "0.1", "all"] and v["seeds"] == 3
    assert v["noise_floor"] is None  # the grid ran one seed: nothing to bootstrap the fit's noise from
    one_seed = [dict(r, run_id="h" + r["run_id"]) for r in _rows(_power, widths=(512,), variants=("a", "b"))]
    assert validate(rows, one_seed, {**_early(rows), **_early(one_seed)}, {2: SIZES[512]},
                    models={"final_loss": "power_law", "attn_logit": "paper"})["seed_spread"] == {}


def test_the_report_states_the_checks_noise_floor():
    """The check's line quotes the pooled seed sd, the noisiest and quietest LR and 0.674 x sd / sqrt(k)
    (the median of |N(0, sd^2 / k)|, the error on a k-seed mean); nothing with one seed."""
    from stablelab.report.proxy_outcomes import seed_noise_text

    v = {"width": 512, "seeds": 4, "seed_spread": {"0.001": {"sd": 0.005, "dof": 4}, "0.3": {"sd": 0.04, "dof": 4},
                                                   "all": {"sd": 0.02, "dof": 8}}}
    text = seed_noise_text(v)
    assert "varies by 2.0%" in text and "0.5% at lr 0.001 to 4.0% at lr 0.3" in text
    assert "the 4-seed mean it is scored on by a median 0.7%" in text  # 0.674 x 2.0% / 2 = 0.674
    assert seed_noise_text({"width": 512, "seed_spread": {}}) == ""


def _fold_residuals_by_hand(rows):
    """(r_B, r_A) per (variant, lr): width 256 from the line through 32-128, width 128 from the line
    through 32 and 64, in log loss against log10 size."""
    by_cell = {(r["variant"], r["width"], r["lr"]): math.log(r["final_loss"]) for r in rows}
    x = {w: math.log10(SIZES[w]) for w in WIDTHS}

    def line_residual(v, lr, fitted, held):
        slope, icept = np.polyfit([x[w] for w in fitted], [by_cell[(v, w, lr)] for w in fitted], 1)
        return by_cell[(v, held, lr)] - (slope * x[held] + icept)

    return ({(v, lr): line_residual(v, lr, (32, 64, 128), 256) for v in "abcd" for lr in LRS},
            {(v, lr): line_residual(v, lr, (32, 64), 128) for v in "abcd" for lr in LRS})


def test_four_widths_calibrate_on_the_error_a_bias_learned_one_width_back_leaves():
    """Four widths, power law: the backtest's residual r_B (width 256 from the line through 32-128)
    and the earlier fold's r_A (width 128 from the line through 32 and 64), worked by hand; every
    score is |r_B(v, lr) - median over the other variants of r_A(., lr)|, and the target's
    half-width is their conformal quantile; the bias stays the backtest's per-LR median."""
    rng = np.random.default_rng(5)
    rows = _rows(_power, noise=0.02, rng=rng, variants=("a", "b", "c", "d"))
    fc = forecast(rows, _early(rows), {2: SIZES[512]}, models={"final_loss": "power_law", "attn_logit": "paper"})
    r_b, r_a = _fold_residuals_by_hand(rows)
    scores = [abs(r_b[(v, lr)] - float(np.median([r_a[(u, lr)] for u in "abcd" if u != v])))
              for v in "abcd" for lr in LRS]
    cal = fc["calibration"]["final_loss"]
    assert cal["scores"] == "transfer"
    assert cal["half_width"] == pytest.approx(conformal_quantile(scores, 0.9), abs=1e-9)
    for lr in LRS:
        assert cal["bias_by_lr"][f"{lr:g}"] == pytest.approx(float(np.median([r_b[(v, lr)] for v in "abcd"])),
                                                             abs=1e-9)
    assert fc["backtest"]["earlier_fold_width"] == 128
    # three widths have no earlier fold: the jackknife
    three = [r for r in rows if r["width"] != 256]
    assert forecast(three, _early(three), {2: SIZES[512]}, models={"final_loss": "power_law",
                                                                  "attn_logit": "paper"}
                    )["calibration"]["final_loss"]["scores"] == "jackknife"


def test_drift_moves_the_targets_bias_by_the_median_change_from_the_earlier_fold():
    """The drift option, by hand on the same four-width sweep: D = median over (variant, lr) of
    r_B - median of the other variants' r_A; the target's bias at each LR is the backtest's plus D,
    its half-width the conformal quantile of |r_B - that median - D|; the backtest is untouched."""
    rng = np.random.default_rng(5)
    rows = _rows(_power, noise=0.02, rng=rng, variants=("a", "b", "c", "d"))
    # a sweep whose per-LR error grows with width: the larger widths end a little worse
    for r in rows:
        r["final_loss"] *= math.exp(0.01 * math.log2(r["width"] / 32) ** 2)
    models = {"final_loss": "power_law", "attn_logit": "paper"}
    plain = forecast(rows, _early(rows), {2: SIZES[512]}, models=models)
    moved = forecast(rows, _early(rows), {2: SIZES[512]}, models=models, drift=True)
    r_b, r_a = _fold_residuals_by_hand(rows)
    signed = [r_b[(v, lr)] - float(np.median([r_a[(u, lr)] for u in "abcd" if u != v])) for v in "abcd" for lr in LRS]
    d = float(np.median(signed))
    assert d > 0.005  # the built curvature: the bias grows from one fold to the next
    cal = moved["calibration"]["final_loss"]
    assert cal["drift"] == pytest.approx(d, abs=1e-12)
    assert cal["half_width"] == pytest.approx(conformal_quantile([abs(s - d) for s in signed], 0.9), abs=1e-9)
    assert plain["calibration"]["final_loss"]["drift"] == 0.0
    scale = moved["groups"][0]["distance_scale"]
    for p, q in zip(plain["points"], moved["points"]):
        if p["quantity"] == "final_loss":
            assert q["predicted"] / p["predicted"] == pytest.approx(math.exp(d * scale), rel=1e-9)
    assert json.dumps(plain["backtest"]["points"], default=str) == json.dumps(moved["backtest"]["points"], default=str)


def test_a_window_fits_every_fold_on_its_k_largest_widths():
    """Five widths, an exact power law except width 16 (loss x 1.5). With window=3 each fit uses the
    3 largest widths below its target: the backtest (256 from 32-128) and the target (from 64-256)
    never see width 16, so the backtest's residuals are 0 and the forecast is the law itself; with
    every width both are pulled by width 16."""
    sizes = {**SIZES, 16: 2.5e4}
    law = lambda lr, n: _power(lr, n) * (1.5 if n == sizes[16] else 1.0)  # noqa: E731
    rows = []
    for w in (16,) + WIDTHS:
        for lr in LRS:
            n = sizes[w]
            rows.append({"run_id": f"b_{w}_{lr}", "variant": "baseline", "optimizer": "adamw", "depth": 2, "tag": "",
                         "width": w, "lr": lr, "seed": 0, "n_params": n, "init_loss": INIT, "final_loss": law(lr, n),
                         "early": 10 * lr * n ** 0.5})
    models = {"final_loss": "power_law", "attn_logit": "paper"}
    windowed = forecast(rows, _early(rows), {2: SIZES[512]}, models=models, window=3)
    assert windowed["groups"][0]["widths"] == [64, 128, 256]
    assert windowed["backtest"]["from_widths"] == [32, 64, 128]
    for p in windowed["points"]:
        if p["quantity"] == "final_loss":
            assert p["predicted"] == pytest.approx(_power(p["lr"], SIZES[512]), rel=1e-9)
    every = forecast(rows, _early(rows), {2: SIZES[512]}, models=models)
    assert every["groups"][0]["widths"] == [16, 32, 64, 128, 256]
    assert max(abs(p["predicted"] / _power(p["lr"], SIZES[512]) - 1)
               for p in every["points"] if p["quantity"] == "final_loss") > 0.05


def test_the_report_sets_the_checks_error_against_its_seed_noise_floor():
    """The floor sentence: the floor's median error and 90% width, the check's error and their ratio; from
    twice the floor the curve, not the seeds, is named as the limit; nothing without a floor."""
    from stablelab.report.proxy_outcomes import floor_text

    floor = {"median_abs_error": 0.01, "width_90": 0.0488}
    far = floor_text({"noise_floor": floor, "accuracy": {"final_loss_median_abs_error": 0.025}})
    assert "median error of 1.0% and a 90% interval 4.9% wide" in far and "was 2.5% (2.5x)" in far
    assert "the curve, not the seeds, limits" in far
    near = floor_text({"noise_floor": floor, "accuracy": {"final_loss_median_abs_error": 0.015}})
    assert "(1.5x)" in near and "more seeds would narrow it" in near
    assert floor_text({"noise_floor": None, "accuracy": {"final_loss_median_abs_error": 0.02}}) == ""
