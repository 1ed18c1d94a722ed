"""Outcome predictions and their intervals on synthetic studies with known power laws."""

import math

import numpy as np
import pytest

from stablelab.analysis.prediction import (check_prediction, extrapolate, observed_group, outcome_predictions,
                                           predict_group, validation_points)

SIZES = {32: 1e5, 64: 4e5, 128: 1.6e6}
TARGET = 6.4e6  # the next width of the same ladder
INIT = 5.5


def _law(a, b, n):
    return a * n ** b


def _runs(laws, sizes=SIZES, seeds=1, noise=0.0, logit=lambda lr, n: 10 * lr * n ** 0.5, seed=0):
    """laws: lr -> (a, b) with final_loss = a N^b; attention logit = 10 lr N^0.5."""
    rng = np.random.default_rng(seed)
    rows = []
    for w, n in sizes.items():
        for lr, (a, b) in laws.items():
            for s in range(seeds):
                loss = _law(a, b, n) * (1 + noise * rng.standard_normal())
                rows.append({"width": w, "lr": lr, "final_loss": min(loss, 99.0), "init_loss": INIT,
                             "early_logit": logit(lr, n) * (1 + noise * rng.standard_normal()), "seed": s})
    return rows


LAWS = {1e-3: (9.0, -0.05), 1e-2: (8.0, -0.06), 1e-1: (2.0, 0.06)}  # lr 0.1 gets worse with size


def test_extrapolate_is_a_line_and_one_point_is_a_constant():
    assert extrapolate([0, 1], [1, 3], 2) == pytest.approx(5)
    assert extrapolate([1], [7], 5) == 7


def test_exact_power_laws_are_predicted_exactly():
    pred = predict_group(_runs(LAWS), SIZES, TARGET)
    for row in pred["per_lr"]:
        a, b = LAWS[row["lr"]]
        truth = min(_law(a, b, TARGET), INIT)
        assert row["final_loss"]["predicted"] == pytest.approx(truth, rel=1e-9)
        lo, hi = row["final_loss"]["interval"]
        assert lo * (1 - 1e-9) <= truth <= hi * (1 + 1e-9)
        assert row["attn_logit"]["predicted"] == pytest.approx(10 * row["lr"] * TARGET ** 0.5, rel=1e-9)
    truths = {lr: min(_law(a, b, TARGET), INIT) for lr, (a, b) in LAWS.items()}
    assert pred["best_lr"]["predicted"] == min(truths, key=truths.get) == 1e-2
    expected_sens = np.mean([v - min(truths.values()) for v in truths.values()])
    assert pred["lr_sensitivity"]["predicted"] == pytest.approx(expected_sens, rel=1e-9)


def test_leave_one_width_out_interval_covers_a_bent_curve():
    """The loss at lr 1e-2 flattens at the largest width: the line through all three widths and the
    fits without one of them disagree, and the interval spans them."""
    rows = _runs(LAWS)
    for r in rows:
        if r["width"] == 128 and r["lr"] == 1e-2:
            r["final_loss"] *= 1.05
    row = next(r for r in predict_group(rows, SIZES, TARGET)["per_lr"] if r["lr"] == 1e-2)
    lo, hi = row["final_loss"]["interval"]
    x = np.log10([1e5, 4e5])
    line_small = math.exp(extrapolate(x, np.log([_law(8.0, -0.06, 1e5), _law(8.0, -0.06, 4e5)]), math.log10(TARGET)))
    assert lo <= line_small <= hi and hi - lo > 0.05
    assert lo <= row["final_loss"]["predicted"] <= hi


def test_divergence_is_predicted_when_the_loss_crosses_init():
    laws = {1e-3: (9.0, -0.05), 1.0: (1.5, 0.09)}  # lr 1 reaches INIT between 1.6e6 and 6.4e6 params
    assert _law(1.5, 0.09, 1.6e6) < INIT < _law(1.5, 0.09, TARGET)
    pred = predict_group(_runs(laws), SIZES, TARGET)
    by_lr = {r["lr"]: r for r in pred["per_lr"]}
    assert by_lr[1.0]["diverges"] and by_lr[1.0]["final_loss"]["predicted"] == INIT
    assert not by_lr[1e-3]["diverges"]
    assert pred["largest_stable_lr"]["predicted"] == 1e-3


def test_seed_bootstrap_interval_covers_the_truth():
    covered = 0
    trials = 20
    for seed in range(trials):
        pred = predict_group(_runs(LAWS, seeds=4, noise=0.01, seed=seed), SIZES, TARGET, seed=seed)
        row = next(r for r in pred["per_lr"] if r["lr"] == 1e-3)
        lo, hi = row["final_loss"]["interval"]
        covered += lo <= _law(9.0, -0.05, TARGET) <= hi
        assert hi > lo
    assert covered >= 0.8 * trials


def test_validation_points_compare_prediction_and_a_real_larger_width():
    train = [{**r, "run_id": f"t{i}", "optimizer": "adamw", "variant": "baseline", "depth": 2, "tag": "",
              "n_params": SIZES[r["width"]]} for i, r in enumerate(_runs(LAWS))]
    held = [{**r, "run_id": f"h{i}", "optimizer": "adamw", "variant": "baseline", "depth": 2, "tag": "",
             "n_params": TARGET} for i, r in enumerate(_runs(LAWS, sizes={256: TARGET}))]
    logits = {r["run_id"]: r["early_logit"] for r in train + held}
    points = validation_points(train, held, logits, {2: TARGET})
    quantities = sorted({p["quantity"] for p in points})
    assert quantities == ["attn_logit", "best_lr", "final_loss", "largest_stable_lr", "lr_sensitivity"]
    assert len(points) == 2 * len(LAWS) + 3
    for p in points:  # exact laws: observed equals predicted
        assert p["inside"] and p["ratio"] == pytest.approx(1.0, rel=1e-9)
        assert p["variant"] == "baseline"


def test_check_prediction_flags_an_observation_outside():
    prediction = {"per_lr": [{"lr": 0.1, "final_loss": {"predicted": 3.0, "interval": [2.9, 3.1]},
                              "attn_logit": {"predicted": 100.0, "interval": [50.0, 200.0]}}],
                  "best_lr": {"predicted": 0.1, "interval": [0.1, 0.1]},
                  "largest_stable_lr": {"predicted": 0.1, "interval": [0.1, 0.1]},
                  "lr_sensitivity": {"predicted": 0.2, "interval": [0.1, 0.3]}}
    observed = observed_group([{"lr": 0.1, "final_loss": 3.3, "init_loss": INIT, "early_logit": 400.0}])
    points = {p["quantity"]: p for p in check_prediction(prediction, observed, {"variant": "v"})}
    assert not points["final_loss"]["inside"] and points["final_loss"]["ratio"] == pytest.approx(1.1)
    assert not points["attn_logit"]["inside"] and points["attn_logit"]["ratio"] == pytest.approx(4.0)
    assert points["best_lr"]["inside"] and points["lr_sensitivity"]["observed"] == 0.0


def test_outcome_predictions_group_by_variant_and_axis_value():
    rows = []
    for variant, tag in (("baseline", ""), ("qk_norm", "_wu0.01")):
        rows += [{**r, "run_id": f"{variant}{i}", "optimizer": "adamw", "variant": variant, "depth": 2, "tag": tag,
                  "n_params": SIZES[r["width"]]} for i, r in enumerate(_runs(LAWS))]
    groups = outcome_predictions(rows, {r["run_id"]: r["early_logit"] for r in rows}, {2: TARGET})
    assert {(g["variant"], g["setting"]) for g in groups} == {("baseline", ""), ("qk_norm", "wu0.01")}


def test_validation_line_counts_inside_per_quantity():
    from stablelab.report.proxy_outcomes import validation_line

    def point(quantity, inside):
        return {"quantity": quantity, "variant": "baseline", "lr": 0.1, "inside": inside}

    summary = {"validation": {"width": 512, "n_runs": 4, "from_widths": [64, 128],
                              "points": [point("final_loss", True), point("final_loss", False),
                                         point("final_loss", False), point("best_lr", True)]}}
    line = validation_line(summary)
    assert "2/4 observed values fell inside" in line
    assert "final_loss 1/3, best_lr 1/1" in line
