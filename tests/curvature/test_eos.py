"""The edge-of-stability study: its statistics, its GD runs, and the `stablelab eos` command."""

from __future__ import annotations

import json

import pytest
import torch
from torch.func import functional_call, hessian

from stablelab.cli import main
from stablelab.data.digits import load_digits
from stablelab.studies.eos import (
    EosConfig,
    hover_statistics,
    make_mlp,
    mse_loss,
    run_gradient_descent,
    run_sgd_trace,
)


def test_hover_statistics_by_hand():
    # lr 0.5 -> 2/lr = 4. Ratios: 0.5, 0.8, 0.95 (reached, >= 0.9), 1.05, 1.2, 1.0, 0.98.
    steps = [0, 10, 20, 30, 40, 50, 60]
    sharpness = [2.0, 3.2, 3.8, 4.2, 4.8, 4.0, 3.92]
    out = hover_statistics(steps, sharpness, lr=0.5, band=0.1)
    assert out["reached_step"] == 20
    assert out["initial_ratio"] == pytest.approx(0.5)
    # After reaching: 0.95, 1.05, 1.2, 1.0, 0.98 -> median 1.0, 4 of 5 within 10%, max 1.2.
    assert out["median_ratio_after"] == pytest.approx(1.0)
    assert out["fraction_within_band_after"] == pytest.approx(0.8)
    assert out["max_ratio_after"] == pytest.approx(1.2)
    assert out["hovers"] is True
    never = hover_statistics(steps, [1.0] * 7, lr=0.5)
    assert never["reached_step"] is None and never["hovers"] is False
    # Starting above 2/lr is a catapult, not progressive sharpening.
    assert hover_statistics(steps, [4.0] * 7, lr=0.5)["hovers"] is False


def test_recorded_sharpness_is_the_exact_top_eigenvalue():
    config = EosConfig(width=8, depth=1, check_every=5)
    data = load_digits()
    record = run_gradient_descent("mse", 0.05, 5, config, data)
    assert record["steps"] == [0, 5]
    model = make_mlp(8, 1, config.seed)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    batch = (data.x_train.double(), data.y_train)

    def loss_of(vector):
        params = {n: c.view(s) for n, c, s in zip(names, vector.split(sizes), shapes)}
        return mse_loss(lambda x: functional_call(model, params, (x,)), batch)

    expected = float(torch.linalg.eigvalsh(hessian(loss_of)(flat))[-1])
    assert abs(record["sharpness"][0] - expected) / expected < 2e-3  # float32 run, 1e-3 Lanczos tol


def test_progressive_sharpening_then_hovering_at_2_over_lr():
    # Cohen et al. 2021: full-batch GD with MSE; sharpness rises to 2/lr and stays there.
    record = run_gradient_descent("mse", 0.2, 600, EosConfig(check_every=25), load_digits())
    assert not record["diverged"]
    assert record["initial_ratio"] < 0.9
    assert record["reached_step"] is not None and record["reached_step"] <= 400
    assert abs(record["median_ratio_after"] - 1) <= 0.1
    assert record["hovers"]


def test_gd_far_above_2_over_lr_diverges_as_a_result():
    record = run_gradient_descent("mse", 50.0, 200, EosConfig(check_every=10), load_digits())
    assert record["diverged"] is True


def test_sgd_trace_matches_an_independent_hutchinson_count():
    config = EosConfig(width=8, depth=1, sgd_steps=20, sgd_batch_size=16, trace_products=90)
    out = run_sgd_trace(0.1, config, load_digits())
    for name in ("sgd", "gd"):
        assert out[name]["trace_ratio"] == pytest.approx(out[name]["trace"] * 0.1 / 2)
        assert out[name]["trace"] > out[name]["lambda_max"] > 0  # trace of a PSD-dominated Hessian


def test_cli_writes_report_and_summary(tmp_path):
    code = main(["eos", "--out", str(tmp_path), "--mse-lrs", "0.2", "--ce-lrs", "", "--mse-steps", "50",
                 "--check-every", "25", "--sgd-lrs", "", "--width", "16"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["steps"] for r in summary["runs"]] == [[0, 25, 50]]
    html = (tmp_path / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html
    assert (tmp_path / "sharpness.png").stat().st_size > 1000


@pytest.mark.parametrize("argv", [["--mse-lrs", "abc"], ["--mse-lrs", "-0.1"], ["--check-every", "0"],
                                  ["--mse-lrs", "", "--ce-lrs", ""]])
def test_cli_bad_input_exits_2(tmp_path, argv, capsys):
    assert main(["eos", "--out", str(tmp_path)] + argv) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.slow
def test_default_study_reproduces_edge_of_stability(tmp_path):
    # The "Done when": on default settings, two learning rates rise to and hover at 2/lr.
    assert main(["eos", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["edge_of_stability_reproduced"]
    assert summary["seconds"] < 300
