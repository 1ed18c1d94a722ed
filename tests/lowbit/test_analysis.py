"""The low-bit study's analysis (stablelab.analysis.lowbit) on hand-made records, worked by hand."""

from __future__ import annotations

import math

import pytest

from stablelab.analysis.lowbit import (best_reste_beats_ste, binary_table, grad_norm_spread, states_comparison,
                                       steps_to_reach, sweep_table)


def _binary(estimator, o, seed, acc, err=1.0, stab=0.1):
    return {"estimator": estimator, "o": o, "seed": seed, "test_acc": acc, "estimating_error": err,
            "gradient_stability": stab}


def _proxy(optimizer, precision, lr, seed, final, init=5.0, losses=(4.0, 3.0, 2.0), grad_norms=(1.0, 3.0)):
    return {"optimizer": optimizer, "precision": precision, "lr": lr, "seed": seed, "final_loss": final,
            "init_loss": init, "diverged": not math.isfinite(final), "steps": [0, 10, 20], "losses": list(losses),
            "grad_norms": list(grad_norms)}


def test_binary_table_and_verdict():
    runs = [_binary("ste", 1.0, 0, 0.90), _binary("ste", 1.0, 1, 0.92), _binary("reste", 3.0, 0, 0.95, 0.5, 0.2),
            _binary("reste", 3.0, 1, 0.97, 0.7, 0.4), _binary("reste", 2.0, 0, 0.80), _binary("reste", 2.0, 1, 0.80)]
    table = binary_table(runs)
    assert [(r["estimator"], r["o"]) for r in table] == [("ste", 1.0), ("reste", 2.0), ("reste", 3.0)]
    reste3 = table[2]
    assert reste3["test_acc_mean"] == pytest.approx(0.96) and reste3["test_acc_spread"] == pytest.approx(0.02)
    assert reste3["estimating_error"] == pytest.approx(0.6) and reste3["gradient_stability"] == pytest.approx(0.3)
    verdict = best_reste_beats_ste(table)
    # best ReSTE 0.96 - STE 0.91 = 0.05 > the larger spread 0.02
    assert verdict["best_o"] == 3.0 and verdict["difference"] == pytest.approx(0.05)
    assert verdict["seed_spread"] == pytest.approx(0.02) and verdict["beyond_seed_spread"] is True


def test_grad_norm_spread_and_steps_to_reach():
    assert grad_norm_spread([1.0, 3.0]) == pytest.approx(0.5)  # std 1 (population), mean 2
    assert math.isnan(grad_norm_spread([2.0]))
    assert steps_to_reach([0, 10, 20], [4.0, 3.0, 2.0], 3.0) == 10
    assert steps_to_reach([0, 10, 20], [4.0, float("nan"), 2.5], 2.0) is None


def test_sweep_table_lr_sensitivity_by_hand():
    """Wortsman et al.: mean over LRs of min(final, init) - best; a diverged run counts as init (5)."""
    runs = [_proxy("adamw", "fp32", 1e-3, 0, 3.0), _proxy("adamw", "fp32", 1e-2, 0, 2.0),
            _proxy("adamw", "int4", 1e-3, 0, 3.5), _proxy("adamw", "int4", 1e-2, 0, float("nan"))]
    table = {(r["optimizer"], r["precision"]): r for r in sweep_table(runs)}
    assert table[("adamw", "fp32")]["lr_sensitivity"] == pytest.approx(((3 - 2) + 0) / 2)
    assert table[("adamw", "int4")]["lr_sensitivity"] == pytest.approx((0 + (5 - 3.5)) / 2)
    assert table[("adamw", "int4")]["diverged"] == 1 and table[("adamw", "int4")]["best_lr"] == 1e-3
    # reference = fp32 AdamW's final loss at the same LR: 3.0 is reached at step 10, 2.0 at step 20
    assert table[("adamw", "fp32")]["steps_to_reference"] == pytest.approx(15)
    assert table[("adamw", "fp32")]["seed_spread"] is None  # one seed per LR
    two = sweep_table([_proxy("adamw", "fp32", 1e-3, 0, 3.0), _proxy("adamw", "fp32", 1e-3, 1, 3.4)])
    assert two[0]["seed_spread"] == pytest.approx(0.4) and two[0]["final_losses"] == [pytest.approx(3.2)]


def test_states_comparison_against_seed_noise():
    runs = [_proxy("adamw", "fp32", 1e-3, 0, 3.0), _proxy("adamw", "fp32", 1e-3, 1, 3.2),
            _proxy("adamw8bit", "fp32", 1e-3, 0, 3.05, losses=(4.0, 3.1, 2.0)),
            _proxy("adamw8bit", "fp32", 1e-3, 1, 3.25)]
    (row,) = states_comparison(runs)
    assert row["difference"] == pytest.approx(0.05) and row["seed_noise"] == pytest.approx(0.2)
    assert row["within_seed_noise"] is True
    assert row["curve_gap"] == pytest.approx(0.05)  # mean curves differ by (3.1 - 3.0) / 2 at step 10
    single = states_comparison([runs[0], runs[2]])
    assert single[0]["within_seed_noise"] is None
