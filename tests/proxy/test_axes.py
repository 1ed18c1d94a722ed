"""Extra sweep axes (warm-up, eps, weight decay, muP-simple, precision), --depths, --validate-width,
and resuming a sweep stored before those existed."""

import json

import pytest

from stablelab import config
from stablelab.cli import main
from stablelab.studies.proxy import ProxySettings, grid_for, sweep_fingerprint

# DIR/sweep.json of `stablelab proxy --out DIR` written by the code before issue 12 (commit fe40b8b)
OLD_DEFAULT_SWEEP = json.loads('''{"batch_size": 8, "corpus": "stdlib", "depth": [2], "log_every": 10, "lrs": [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3], "mup_simple": false, "optimizer": ["adamw"], "run": {"base_width": 64, "batch_size": 8, "beta1": 0.9, "beta2": 0.95, "corpus": "stdlib", "d_head": 32, "eps": 1e-08, "eval_batches": 8, "grad_clip": 1.0, "log_every": 10, "min_lr": 1e-05, "mup_simple": false, "seq_len": 64, "steps": 200, "warmup_fraction": 0.1, "weight_decay": 0.0001}, "seeds": 1, "seq_len": 64, "steps": 200, "variants": ["baseline", "qk_norm", "z_loss", "qk_norm+z_loss"], "weight_decay": 0.0001, "widths": [64, 128, 256]}''')

TINY = ["--widths", "32,64", "--lrs", "1e-3,1e-1", "--variants", "baseline", "--steps", "12",
        "--batch-size", "4", "--seq-len", "16", "--log-every", "4", "--prediction-step", "4",
        "--predict-width", "128", "--workers", "2", "--no-progress"]


def test_a_sweep_stored_before_the_new_axes_still_resumes():
    settings = config.from_flags(ProxySettings, {"widths": "64,128,256"})  # the default before width 32 joined
    assert sweep_fingerprint(settings, grid_for(settings)) == OLD_DEFAULT_SWEEP
    assert [c.run_id for c in grid_for(settings).runs()][:2] == ["baseline_w64_d2_lr0.0003_s0",
                                                                 "baseline_w64_d2_lr0.001_s0"]


def test_axes_become_run_ids_and_change_the_fingerprint():
    settings = config.from_flags(ProxySettings, {"warmup": "0,0.1", "precision": "fp32,int4", "widths": "32",
                                                 "lrs": "1e-2", "variants": "baseline"})
    grid = grid_for(settings)
    runs = grid.runs()
    assert sorted(r.run_id for r in runs) == sorted(f"baseline_w32_d2_lr0.01_s0_wu{w}_{p}" for w in ("0", "0.1")
                                                    for p in ("fp32", "int4"))
    assert {(r.warmup_fraction, r.precision) for r in runs} == {(0.0, "fp32"), (0.0, "int4"), (0.1, "fp32"), (0.1, "int4")}
    fp = sweep_fingerprint(settings, grid)
    assert fp["warmup"] == [0.0, 0.1] and fp["precision"] == ["fp32", "int4"]
    one = config.from_flags(ProxySettings, {"eps": "1e-6", "depths": "1,3"})
    g = grid_for(one)
    assert g.depths == (1, 3) and {r.eps for r in g.runs()} == {1e-6} and "eps" not in g.runs()[0].run_id


def test_sweep_with_axes_and_validation(tmp_path):
    out = tmp_path / "axes"
    args = [*TINY, "--warmup", "0,0.1", "--precision", "int8", "--validate-width", "128"]
    assert main(["proxy", *args, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 2 * 2 * 2
    assert set(summary["axes"]) == {"warmup_fraction"}  # one precision: it sets the recipe, no axis
    keys = set(summary["lr_sensitivity"]["baseline"])
    assert keys == {f"{w} wu{u}" for w in (32, 64) for u in ("0", "0.1")}
    config_json = json.loads((out / "runs" / "baseline_w32_d2_lr0.1_s0_wu0" / "config.json").read_text())
    assert config_json["precision"] == "int8" and config_json["warmup_fraction"] == 0.0
    pred = summary["prediction"]
    assert {"width", "per_lr", "best_lr", "largest_stable_lr", "lr_sensitivity", "methods"} <= set(pred)
    assert set(pred["best_lr"]) >= {"predicted", "interval"}
    validation = summary["validation"]
    assert validation["width"] == 128 and validation["n_runs"] == 2 * 2
    assert len(validation["points"]) == 2 * (2 * 3 + 3)  # per LR: final loss, logit, diverged; 3 per group
    for p in validation["points"]:
        assert set(p) >= {"quantity", "variant", "lr", "predicted", "interval", "level", "observed", "ratio",
                          "inside"}
    assert validation["coverage"]["all"]["total"] == len(validation["points"])
    assert set(validation["accuracy"]) >= {"final_loss_median_abs_error", "final_loss_median_signed_error",
                                           "best_lr_exact", "best_lr_within_one", "best_lr_median_regret"}
    # two widths: no backtest, and the intervals say they are not calibrated
    assert summary["backtest"] is None and "not calibrated" in pred["calibration_note"]
    assert all(p["calibrated"] is False and p["level"] == 0.9 for p in pred["points"])
    assert all("probability" in p for p in pred["points"] if p["quantity"] == "diverged")
    page = (out / "report.html").read_text()
    assert "Prediction checked" in page and "LR sensitivity per warmup_fraction" in page
    # the validation runs are not part of the fits, and a rerun redoes nothing
    assert all(r["width"] in (32, 64) for r in summary["runs"])
    before = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/done")}
    assert len(before) == 12
    assert main(["proxy", *args, "--out", str(out)]) == 0
    assert before == {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/done")}


@pytest.mark.parametrize("args, message", [
    (["--validate-width", "64"], "is one of the grid's widths"),
    (["--validate-width", "80"], "width 80 must be a positive multiple"),
    (["--eps", "-1"], "--eps"),
])
def test_bad_axis_input(tmp_path, capsys, args, message):
    assert main(["proxy", *TINY, *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_three_widths_backtest_themselves_in_summary_and_report(tmp_path):
    """With 3 widths the study predicts its own largest width from the smaller two (no extra runs):
    summary.json's backtest has every point scored, and the report has its section and figure."""
    out = tmp_path / "bt"
    args = ["--widths", "32,64,96", "--lrs", "1e-3,1e-2,1e-1", "--variants", "baseline", "--steps", "12",
            "--batch-size", "4", "--seq-len", "16", "--log-every", "4", "--prediction-step", "4",
            "--workers", "2", "--no-progress", "--interval", "0.8", "--validate-width", "128",
            "--validate-lrs", "1e-2"]
    assert main(["proxy", *args, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    bt = summary["backtest"]
    assert bt["width"] == 96 and bt["from_widths"] == [32, 64]
    assert len(bt["points"]) == 3 * 3 + 3
    # one variant: at most 3 backtest residuals per class, too few for an 80% interval (4 needed)
    assert "not calibrated" in summary["prediction"]["calibration_note"] and "4 or more" in \
        summary["prediction"]["calibration_note"]
    for p in bt["points"]:
        assert set(p) >= {"quantity", "variant", "lr", "predicted", "interval", "level", "observed", "inside"}
        assert p["level"] == 0.8
    assert bt["coverage"]["all"] == {"inside": sum(p["inside"] for p in bt["points"]), "total": 12,
                                     "fraction": sum(p["inside"] for p in bt["points"]) / 12}
    # the check trained only lr 1e-2 at width 128: its per-LR points, no best LR or sensitivity
    assert sorted({r["run_id"] for r in summary["runs"]}) == sorted(
        f"baseline_w{w}_d2_lr{lr}_s0" for w in (32, 64, 96) for lr in ("0.001", "0.01", "0.1"))
    assert {p["lr"] for p in summary["validation"]["points"]} == {0.01}
    assert len(summary["validation"]["points"]) == 3
    page = (out / "report.html").read_text()
    assert "how well this study predicts itself" in page and (out / "figures" / "forecast.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--validate-lrs", "1e-3"], "--validate-lrs needs --validate-width"),
    (["--validate-width", "128", "--validate-lrs", "5e-3"], "not in the grid's --lrs"),
    (["--interval", "1.5"], "--interval"),
])
def test_bad_forecast_input(tmp_path, capsys, args, message):
    assert main(["proxy", *TINY, *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
