"""Per-LR intervals from the study's seed noise (2+ seeds): the variance model, its arithmetic by hand,
and coverage on synthetic sweeps whose noise differs by LR."""

import math

import numpy as np
import pytest

from stablelab.analysis.calibration import (Calibration, calibrate, conformal_quantile, is_inside, line_leverage,
                                            noise_scales, score_leverage)
from stablelab.analysis.cells import noise_by_lr
from stablelab.analysis.prediction import forecast

WIDTHS = (32, 64, 128, 256)
SIZES = {32: 1e5, 64: 4e5, 128: 1.6e6, 256: 6.4e6, 512: 2.56e7}
LRS = (1e-3, 1e-2, 1e-1)
POWER = {1e-3: (9.0, -0.05), 1e-2: (8.0, -0.06), 1e-1: (2.0, 0.05)}
NOISE = {1e-3: 0.004, 1e-2: 0.008, 1e-1: 0.04}  # seed sd of log final loss: quiet, quiet, loud


def _law(lr, n):
    a, b = POWER[lr]
    return a * n ** b


def _rows(rng, seeds=2, variants="abcdefgh", noise=NOISE):
    rows = []
    for v in variants:
        for w in WIDTHS:
            for lr in LRS:
                for s in range(seeds):
                    rows.append({"run_id": f"{v}_{w}_{lr}_{s}", "variant": v, "optimizer": "adamw", "depth": 2,
                                 "tag": "", "width": w, "lr": lr, "seed": s, "n_params": SIZES[w], "init_loss": 5.5,
                                 "final_loss": _law(lr, SIZES[w]) * math.exp(noise[lr] * rng.standard_normal()),
                                 "early": 10 * lr * SIZES[w] ** 0.5})
    return rows


def test_noise_scales_by_hand():
    """tau^2 = mean(score^2 - noise(lr)); sigma(lr) = sqrt(tau^2 + noise(lr)), relative to the median
    LR's sigma."""
    pairs = [(1, 0.1), (1, 0.2), (1, 0.0), (2, 0.3), (2, 0.4)]
    noise = {1: 0.0, 2: 0.05}
    tau2 = ((0.01 - 0) + (0.04 - 0) + (0.0 - 0) + (0.09 - 0.05) + (0.16 - 0.05)) / 5  # = 0.04
    assert tau2 == pytest.approx(0.04)
    sigma = {1: math.sqrt(0.04), 2: math.sqrt(0.09)}  # 0.2 and 0.3; median of two = 0.25
    got = noise_scales(pairs, noise)
    assert got == pytest.approx({lr: v / 0.25 for lr, v in sigma.items()}) == {1: 0.8, 2: 1.2}
    # more noise than the scores hold: tau^2 clips at 0 and sigma is the noise alone
    assert noise_scales([(1, 0.1), (2, 0.1)], {1: 0.04, 2: 0.16}) == pytest.approx({1: 0.2 / 0.3, 2: 0.4 / 0.3})
    assert noise_scales(pairs, {1: 0.0}) == {}  # an LR without noise: no per-LR widths


def test_calibrate_with_noise_normalises_the_scores_and_widens_the_loud_lr():
    """Jackknife scores (three groups, two LRs) divided by each LR's scale; the half-width is their
    conformal quantile and each LR's is that times its scale."""
    residuals = {"a": {1: 0.00, 2: 0.10}, "b": {1: 0.01, 2: -0.20}, "c": {1: -0.01, 2: 0.30},
                 "d": {1: 0.02, 2: 0.00}, "e": {1: 0.00, 2: -0.10}}
    noise = {1: 1e-4, 2: 0.02}
    cal = calibrate("final_loss", residuals, 0.8, seed_sd=0.05, floor=0.08, noise_by_lr=noise)
    pairs = []
    for g, rs in residuals.items():
        for lr, r in rs.items():
            others = [residuals[h][lr] for h in residuals if h != g]
            pairs.append((lr, abs(r - float(np.median(others)))))
    scale = noise_scales(pairs, noise)
    q = conformal_quantile([s / scale[lr] for lr, s in pairs], 0.8)
    assert cal.calibrated and cal.half_width == pytest.approx(q)
    assert cal.half_width_at(1) == pytest.approx(q * scale[1]) and cal.half_width_at(2) == pytest.approx(q * scale[2])
    tau2 = max(0.0, float(np.mean([s * s - noise[lr] for lr, s in pairs])))
    assert cal.half_width_at(2) / cal.half_width_at(1) == pytest.approx(math.sqrt((tau2 + 0.02) / (tau2 + 1e-4)))
    assert cal.half_width_at(2) > cal.half_width_at(1)
    assert cal.to_json()["width_by_lr"] == pytest.approx({"1": scale[1], "2": scale[2]})
    # without noise: one half-width for every LR, floored as before
    plain = calibrate("final_loss", residuals, 0.8, seed_sd=0.05, floor=0.08)
    assert plain.half_width_at(1) == plain.half_width_at(2) == max(conformal_quantile([s for _, s in pairs], 0.8), 0.08)


def test_score_leverage_by_hand():
    """Evenly spaced log sizes 0..3 (4 widths): h_B = 1/3 + (3 - 1)^2 / 2 = 7/3 (the line through 0..2
    at 3), h_A = 1/2 + (2 - 0.5)^2 / 0.5 = 5 (through 0, 1 at 2); four groups: kappa = pi / 6."""
    kappa = math.pi / 6
    assert line_leverage([0, 1, 2], 3) == pytest.approx(7 / 3) and line_leverage([0, 1], 2) == pytest.approx(5)
    assert score_leverage([0, 1, 2, 3], 4) == pytest.approx((1 + 7 / 3) + kappa * 6)
    assert score_leverage([0, 1, 2], 4) == pytest.approx(6 * (1 + kappa))  # 3 widths: jackknife, h_B = 5


def test_noise_by_lr_by_hand():
    """Two seeds per cell: each cell's sd^2 estimate is (x1 - x2)^2 / 2 (one dof); pooled per LR over
    cells; the variance of a 2-seed mean times the factor."""
    rows = []
    for w, (a, b) in {32: (0.00, 0.02), 64: (0.01, -0.03)}.items():
        for s, d in enumerate((a, b)):
            rows.append({"width": w, "lr": 0.1, "seed": s, "final_loss": 2.0 * math.exp(d), "init_loss": 5.0})
            rows.append({"width": w, "lr": 0.01, "seed": s, "final_loss": 2.0 * math.exp(d / 10), "init_loss": 5.0})
    sd2 = ((0.00 - 0.02) ** 2 / 2 + (0.01 + 0.03) ** 2 / 2) / 2
    got = noise_by_lr({"g": rows}, factor=3.0)
    assert got[0.1] == pytest.approx(3.0 * sd2 / 2)
    assert got[0.01] == pytest.approx(3.0 * sd2 / 100 / 2)
    assert noise_by_lr({"g": [r for r in rows if r["seed"] == 0]}, 3.0) == {}  # one seed: nothing to measure


def test_per_lr_intervals_cover_fresh_draws_at_every_lr():
    """Synthetic two-seed sweeps whose seed noise is 10x larger at lr 0.1 than at 1e-3: the 90%
    intervals at width 512 cover 85-95% of fresh two-seed means overall and at least 80% at each LR
    (one width for every LR would over-cover the quiet LRs and miss the loud one), and the loud LR's
    interval is the widest."""
    inside = {lr: 0 for lr in LRS}
    total = {lr: 0 for lr in LRS}
    width = {lr: [] for lr in LRS}
    for trial in range(25):
        rng = np.random.default_rng(700 + trial)
        rows = _rows(rng)
        fc = forecast(rows, {r["run_id"]: r["early"] for r in rows}, {2: SIZES[512]},
                      models={"final_loss": "power_law", "attn_logit": "paper"}, seed=trial)
        assert fc["calibration"]["final_loss"]["width_by_lr"]
        for p in fc["points"]:
            if p["quantity"] != "final_loss":
                continue
            lr = p["lr"]
            draw = _law(lr, SIZES[512]) * float(np.exp(NOISE[lr] * rng.standard_normal(2)).mean())
            inside[lr] += is_inside(draw, p["interval"])
            total[lr] += 1
            width[lr].append(math.log(p["interval"][1] / p["interval"][0]))
    overall = sum(inside.values()) / sum(total.values())
    assert 0.85 <= overall <= 0.95, (overall, inside)
    for lr in LRS:
        assert inside[lr] / total[lr] >= 0.8, (lr, inside)
    assert np.median(width[1e-1]) > 2 * np.median(width[1e-3])


def test_one_seed_keeps_one_half_width_for_every_lr():
    rows = _rows(np.random.default_rng(1), seeds=1)
    fc = forecast(rows, {r["run_id"]: r["early"] for r in rows}, {2: SIZES[512]},
                  models={"final_loss": "power_law", "attn_logit": "paper"})
    cal = fc["calibration"]["final_loss"]
    assert cal["width_by_lr"] == {}
    widths = {round(math.log(p["interval"][1] / p["interval"][0]), 12) for p in fc["points"]
              if p["quantity"] == "final_loss" and p["interval"][1] < 5.5}
    assert len(widths) == 1
    assert isinstance(Calibration("final_loss", 0.9, 0.0, 0.1, 1, True).half_width_at(0.1), float)


def test_the_report_gives_the_per_lr_range_of_the_interval():
    from stablelab.report.proxy_outcomes import calibration_text

    cal = {"calibrated": True, "bias": 0.0, "bias_by_lr": {}, "half_width": 0.05, "n": 28, "scores": "transfer",
           "width_by_lr": {"0.001": 0.5, "0.1": 2.0}}
    text = calibration_text({"calibration": {"final_loss": cal}, "level": 0.9, "groups": []})
    assert f"x/÷ {math.exp(0.025):.4g} to {math.exp(0.1):.4g} by LR" in text
    cal["width_by_lr"] = {}
    assert f"x/÷ {math.exp(0.05):.4g} from 28" in calibration_text({"calibration": {"final_loss": cal}, "level": 0.9})
