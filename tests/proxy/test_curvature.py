"""The proxy study's curvature readings: warm-up against preconditioned sharpness and gradient RMS
against eps, on hand-made results (pure functions), and a tiny sweep end to end."""

import json
import math

import pytest

from stablelab.analysis.proxy_curvature import (grad_rms_per_layer, grad_rms_table, reference_lr,
                                                 warmup_curvature)


def _run(lr, warmup, ratio, final, diverged=False, width=64):
    return {"run_id": f"r{lr}_{warmup}_{width}", "variant": "baseline", "width": width, "depth": 2, "lr": lr,
            "warmup_fraction": warmup, "final_loss": final, "diverged": diverged, "max_sharpness_ratio": ratio,
            "sharpness_checks": [{"step": 10}] * 3, "eps": 1e-8, "weight_decay": 1e-4}


def test_warmup_curvature_by_hand():
    runs = [_run(0.1, 0.0, 5.0, 3.5), _run(0.1, 0.1, 0.8, 3.0), _run(0.1, 0.5, 0.5, 3.1),
            _run(0.01, 0.0, 0.9, 2.9), _run(0.01, 0.1, 0.7, 2.95, diverged=False)]
    out = warmup_curvature(runs)
    lines = {(x["lr"], x["warmup_fraction"]): x for x in out["lines"]}
    # lr 0.1: best 3.0; 3.5 > 1.05 * 3.0 is unstable and crossed; 3.1 < 3.15 is not unstable
    assert lines[(0.1, 0.0)]["crossed"] and lines[(0.1, 0.0)]["unstable"]
    assert not lines[(0.1, 0.5)]["unstable"] and not lines[(0.1, 0.5)]["crossed"]
    assert out["agreement"] == 1.0  # every crossed run was unstable, every other was not
    assert out["longer_warmup_lowers_sharpness"] == "2/2"
    assert warmup_curvature([{"variant": "x"}]) is None


def test_grad_rms_is_norm_over_sqrt_numel_median_of_the_second_half():
    rows = [{"step": s, "grad_norm/w": 2.0 * s} for s in range(0, 100, 10)]  # steps 50-90 count
    out = grad_rms_per_layer(rows, {"w": 16}, steps=100)
    assert out["w"] == pytest.approx(statistics_median([100, 120, 140, 160, 180]) / 4)


def statistics_median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def test_grad_rms_table_holds_the_other_axes_fixed_and_reference_lr_is_nearest_1e_2():
    a = {**_run(0.01, 0.1, 1, 3), "param_numels": {"w": 4}, "steps_done": 10, "run_id": "a"}
    b = {**a, "width": 128, "run_id": "b"}
    c = {**a, "warmup_fraction": 0.0, "run_id": "c"}           # another warm-up: left out
    rows = {k: [{"step": 9, "grad_norm/w": 2.0}] for k in "abc"}
    table = grad_rms_table([a, b, c], rows, 0.01)
    assert [e["width"] for e in table] == [64, 128] and table[0]["grad_rms"]["w"] == 1.0
    assert reference_lr([1e-3, 3e-3, 3e-2, 1e-1]) == 3e-2  # |log 3| < |log 1/3.33|
    assert reference_lr([1e-4, 1e-2, 1.0]) == 1e-2 and math.isclose(reference_lr([0.3]), 0.3)


def test_a_tiny_sweep_records_sharpness_checks_and_gradient_rms(tmp_path):
    from stablelab.cli import main

    out = tmp_path / "p"
    assert main(["proxy", "--widths", "32", "--lrs", "1e-2", "--variants", "baseline", "--warmup", "0,0.5",
                 "--steps", "12", "--log-every", "4", "--sharpness-every", "3", "--sharpness-steps", "7",
                 "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    lines = summary["warmup_curvature"]["lines"]
    assert len(lines) == 2 and all(x["checks"] == 2 for x in lines)  # steps 3 and 6, not 9
    result = json.loads(next((out / "runs").glob("*_wu0/result.json")).read_text())
    assert [c["step"] for c in result["sharpness_checks"]] == [3, 6]
    for check in result["sharpness_checks"]:  # 38/lr(t) at that step's LR, Adam beta1 0.9
        assert check["adam_threshold"] == pytest.approx(38 / check["lr"], rel=1e-6)
        assert check["adam_ratio"] == pytest.approx(check["preconditioned_lambda_max"] / check["adam_threshold"])
    assert summary["grad_rms"]["lr"] == 1e-2 and summary["grad_rms"]["runs"]
    html = (out / "report.html").read_text()
    assert "Warm-up against curvature" in html and "Gradient RMS against AdamW eps" in html
