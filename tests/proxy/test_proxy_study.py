"""End to end: the `stablelab proxy` command on a tiny grid, its outputs, resume and bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stablelab.analysis.proxy import lr_sensitivity
from stablelab.cli import main

TINY = ["--widths", "32,64", "--lrs", "1e-3,1e-1", "--variants", "baseline,qk_norm", "--steps", "30",
        "--batch-size", "8", "--seq-len", "32", "--prediction-step", "10", "--predict-width", "256",
        "--workers", "2", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("proxy") / "out"
    assert main(["proxy", *TINY, "--out", str(out)]) == 0
    return out


def test_summary_has_the_interface_fields(tiny_study):
    summary = json.loads((tiny_study / "summary.json").read_text())
    assert len(summary["runs"]) == 8
    for run in summary["runs"]:
        for key in ("variant", "width", "depth", "lr", "seed", "final_loss", "diverged",
                    "max_attn_logit", "final_log_z"):
            assert key in run
        assert run["depth"] == 2 and run["seed"] == 0
    assert set(summary["lr_sensitivity"]) == {"baseline", "qk_norm"}
    assert set(summary["lr_sensitivity"]["baseline"]) == {"32", "64"}


def test_lr_sensitivity_matches_the_runs(tiny_study):
    summary = json.loads((tiny_study / "summary.json").read_text())
    for variant in ("baseline", "qk_norm"):
        for width in (32, 64):
            runs = sorted((r for r in summary["runs"] if r["variant"] == variant and r["width"] == width),
                          key=lambda r: r["lr"])
            finals = [r["final_loss"] if r["final_loss"] is not None else float("nan") for r in runs]
            expected = lr_sensitivity(finals, [r["init_loss"] for r in runs])
            assert summary["lr_sensitivity"][variant][str(width)] == pytest.approx(expected)


def test_report_is_self_contained(tiny_study):
    page = (tiny_study / "report.html").read_text()
    # six figures of the sweep, the forecast, and the gradient RMS per layer (its LRs include 1e-2's nearest)
    assert page.count("data:image/png;base64,") == 8 and "Gradient RMS against AdamW eps" in page
    assert "http://" not in page and "https://" not in page  # opens offline
    assert "LR sensitivity" in page and "Prediction" in page
    assert (tiny_study / "summary.md").read_text().startswith("# Proxy study summary")
    assert (tiny_study / "figures" / "lr_vs_loss.png").stat().st_size > 10_000


def test_run_store_holds_metrics_and_parquet(tiny_study):
    import pyarrow.parquet as pq

    run = tiny_study / "runs" / "baseline_w32_d2_lr0.1_s0"
    rows = pq.read_table(run / "metrics.parquet").to_pylist()
    assert [r["step"] for r in rows] == [0, 10, 20, 29]
    # every logged step: the monitor's every-step signals and the run's own extras
    for key in ("loss", "grad_norm", "grad_rms_mlp0", "update_rms", "lr"):
        assert all(r[key] is not None for r in rows)
    # sampled steps (every 10th): attention logits per layer and output log Z from the monitor's hooks
    for key in ("attn_logit_max_l0", "attn_logit_max_l1", "log_z_mean", "log_z_max"):
        assert all(r[key] is not None for r in rows[:3])
    # the first logged loss is the cross-entropy at initialisation: close to ln(256) for bytes
    assert abs(rows[0]["loss"] - math.log(256)) < 1.0
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert all({"kind", "step", "severity", "message"} <= set(e) for e in events)
    config = json.loads((run / "config.json").read_text())
    assert config["corpus"] == "stdlib"


def test_rerun_does_not_redo_finished_runs(tiny_study):
    before = {p.parent.name: p.stat().st_mtime_ns for p in tiny_study.glob("runs/*/done")}
    assert main(["proxy", *TINY, "--out", str(tiny_study)]) == 0
    after = {p.parent.name: p.stat().st_mtime_ns for p in tiny_study.glob("runs/*/done")}
    assert before == after and len(after) == 8


@pytest.mark.parametrize("change, message", [
    (["--variants", "baseline,nope"], "unknown variant 'nope'"),
    (["--lrs", "1e-3,-1e-1"], "learning rates must be positive"),
    (["--corpus", "/no/such/corpus"], "corpus not found"),
    (["--widths", "abc"], "--widths"),
    (["--seq-len", "100000000"], "needs at least 100000002 bytes of training text"),  # longer than the corpus
    (["--seq-len", "200000", "--batch-size", "64"], "GiB free"),  # attention scores alone: TiBs
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, change, message):
    args = list(TINY)
    flag = change[0]
    if flag in args:
        i = args.index(flag)
        args[i:i + 2] = change
    else:
        args += change
    assert main(["proxy", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "o").exists()  # nothing written for bad input


@pytest.mark.parametrize("content", [b'{"grid": [1, 2', b"\xff\xfe not json", b"[1, 2, 3]"])
def test_a_corrupt_or_foreign_sweep_json_is_one_line(tmp_path, capsys, content):
    out = tmp_path / "o"
    out.mkdir()
    (out / "sweep.json").write_bytes(content)
    assert main(["proxy", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "sweep.json" in err and "new --out" in err and "\n" not in err
    assert (out / "sweep.json").read_bytes() == content and sorted(p.name for p in out.iterdir()) == ["sweep.json"]


def test_an_out_that_cannot_be_created_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    assert main(["proxy", *TINY, "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot create or write --out" in err and "\n" not in err and blocker.read_text() == "mine"


def test_different_grid_in_out_is_refused(tiny_study, capsys):
    args = list(TINY)
    args[args.index("--steps") + 1] = "40"
    assert main(["proxy", *args, "--out", str(tiny_study)]) == 2
    assert "holds a different grid" in capsys.readouterr().err


def _done_results(out: Path) -> dict:
    return {p.parent.name: (p.parent / "result.json").read_text() for p in out.glob("runs/*/done")}


def test_sigkill_mid_sweep_then_resume(tmp_path):
    """Kill the driver with SIGKILL after some runs finished; rerunning finishes the grid, keeps
    every finished run as it was and runs none of them again."""
    out = tmp_path / "out"
    args = ["--widths", "32", "--lrs", "1e-3,3e-3,1e-2,3e-2,1e-1,3e-1", "--variants", "baseline",
            "--steps", "60", "--batch-size", "8", "--seq-len", "32", "--workers", "1",
            "--prediction-step", "10", "--no-progress", "--out", str(out)]
    cmd = [sys.executable, "-m", "stablelab", "proxy", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while len(list(out.glob("runs/*/done"))) < 2:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, as `kill -9 PID` does
        proc.wait()
        finished = _done_results(out)
        assert 2 <= len(finished) < 6
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        final = _done_results(out)
        assert len(final) == 6
        for run_id, result in finished.items():  # kept, byte for byte: not run twice
            assert final[run_id] == result
        summary = json.loads((out / "summary.json").read_text())
        assert sorted(r["run_id"] for r in summary["runs"]) == sorted(final)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # orphaned Dask workers of the killed driver
        except ProcessLookupError:
            pass


def test_address_sends_runs_to_a_running_scheduler(tmp_path):
    """`--address` uses an existing Dask scheduler with no other change (here: one started in the test)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        out = tmp_path / "out"
        args = ["--widths", "32", "--lrs", "1e-3,1e-2", "--variants", "qk_norm", "--steps", "12",
                "--batch-size", "4", "--seq-len", "16", "--prediction-step", "10", "--no-progress"]
        assert main(["proxy", *args, "--address", cluster.scheduler_address, "--out", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert sorted(r["lr"] for r in summary["runs"]) == [1e-3, 1e-2]
        # the runs ran in the cluster's worker process, not in this one
        pids = {json.loads(p.read_text())["pid"] for p in out.glob("runs/*/result.json")}
        assert os.getpid() not in pids


def test_unreachable_address_is_a_usage_error(tmp_path, capsys):
    args = ["--widths", "32", "--lrs", "1e-3", "--variants", "qk_norm", "--steps", "5", "--no-progress"]
    assert main(["proxy", *args, "--address", "tcp://127.0.0.1:9", "--out", str(tmp_path / "o")]) == 2
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err


def _forecast_variants():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "forecast_variants.py"
    spec = importlib.util.spec_from_file_location("forecast_variants", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exported_forecast_inputs_rescore_like_the_folder(tiny_study, tmp_path):
    """benchmarks/forecast_variants.py --export keeps what the forecast reads: the export, with the
    study folder gone, gives the same forecast as the folder (NaN losses kept)."""
    from stablelab.analysis.prediction import forecast

    fv = _forecast_variants()
    path = tmp_path / "study.json"
    fv.export(tiny_study, path)
    folder, exported = fv.load(tiny_study), fv.load(path)
    assert exported["target"] == folder["target"] and exported["early"] == folder["early"]
    key = (lambda r: r["run_id"])
    assert len(exported["train"]) == len(folder["train"]) == 8
    for a, b in zip(sorted(exported["train"], key=key), sorted(folder["train"], key=key)):
        assert {k: a[k] for k in fv.KEPT if not (isinstance(a[k], float) and math.isnan(a[k]))} == \
               {k: b.get(k) for k in fv.KEPT if not (isinstance(a[k], float) and math.isnan(a[k]))}
    one, two = (forecast(s["train"], s["early"], s["target"]) for s in (folder, exported))
    assert json.dumps(one["points"], default=str) == json.dumps(two["points"], default=str)
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a forecast-inputs export"):
        fv.load(tmp_path / "other.json")
    # --add: another study's runs appended (a width run afterwards); a shared run id or another
    # logit step is refused
    extra = json.loads(path.read_text())
    extra["results"] = [{**extra["results"][0], "run_id": "w16_extra", "width": 16}]
    extra["early"] = {"w16_extra": 1.5}
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    fv.export(tiny_study, tmp_path / "both.json", [tmp_path / "extra.json"])
    both = fv.load(tmp_path / "both.json")
    assert len(both["train"]) == 9 and both["early"]["w16_extra"] == 1.5
    with pytest.raises(SystemExit, match="run ids already"):
        fv.export(tiny_study, tmp_path / "twice.json", [path])
    extra["summary"]["prediction"]["step"] += 1
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    with pytest.raises(SystemExit, match="attention logits read at step"):
        fv.export(tiny_study, tmp_path / "both.json", [tmp_path / "extra.json"])


def test_point_table_lists_each_checked_final_loss_by_hand():
    """--points: one row per final-loss point, error = observed / forecast - 1 and the interval's
    width relative to the forecast, worked by hand; other quantities and unscored points left out."""
    fv = _forecast_variants()
    scored = {"points": [
        {"quantity": "final_loss", "variant": "baseline", "lr": 0.01, "predicted": 2.0, "observed": 2.1,
         "interval": [1.9, 2.2], "inside": True},
        {"quantity": "final_loss", "variant": "qk_norm", "lr": 0.3, "predicted": 2.5, "observed": 2.25,
         "interval": [2.4, 2.6], "inside": False},
        {"quantity": "attn_logit", "variant": "baseline", "lr": 0.01, "predicted": 10.0, "observed": 9.0,
         "interval": [5.0, 20.0], "inside": True},
        {"quantity": "final_loss", "variant": "z_loss", "lr": 0.1, "predicted": 2.0, "observed": None,
         "interval": None, "inside": False}]}
    rows = fv.point_table(scored)
    assert rows[2] == "| baseline | 0.01 | 2.0000 | 2.1000 | +5.0% | 15.0% | yes |"
    assert rows[3] == "| qk_norm | 0.3 | 2.5000 | 2.2500 | -10.0% | 8.0% | **no** |"
    assert len(rows) == 4


def test_the_seed_noise_floor_matches_a_lines_leverage_worked_by_hand():
    """--floor: for a per-LR power law (a line in log size), the forecast's seed-noise sd is
    sqrt(sum_i c_i^2 sd_i^2 / k), c_i the line's extrapolation weights 1/n + (x_t - mean)(x_i - mean)/Sxx
    and sd_i each width's measured seed spread; the check's own is sd_check / sqrt(k). The bootstrap
    (200 draws) must land within 15% of the first and equal the second."""
    from stablelab.analysis.cells import seed_spread_by_lr
    from stablelab.analysis.prediction import rows_by_group

    fv = _forecast_variants()
    rng = np.random.default_rng(3)
    sizes = {32: 1e5, 64: 4e5, 128: 1.6e6, 256: 6.4e6, 512: 2.56e7}
    rows = [{"run_id": f"{w}_{lr}_{s}", "variant": "baseline", "optimizer": "adamw", "depth": 2, "tag": "",
             "width": w, "lr": lr, "seed": s, "n_params": sizes[w], "init_loss": 6.0,
             "final_loss": 9.0 * sizes[w] ** -0.05 * math.exp(0.03 * rng.standard_normal())}
            for w in sizes for lr in (1e-3, 1e-2) for s in range(2)]
    early = {r["run_id"]: 1.0 for r in rows}
    study = {"train": [r for r in rows if r["width"] != 512], "held": [r for r in rows if r["width"] == 512],
             "width": 512, "early": early, "check_target": {2: sizes[512]}}
    table = fv.floor_table(study, "power_law")
    x = np.log10([sizes[w] for w in (32, 64, 128, 256)])
    c = 1 / 4 + (np.log10(sizes[512]) - x.mean()) * (x - x.mean()) / np.sum((x - x.mean()) ** 2)
    for row in table[3:5]:
        lr = float(row.split("|")[1])
        sd = [seed_spread_by_lr(rows_by_group([r for r in rows if r["width"] == w], early))[f"{lr:g}"]["sd"]
              for w in (32, 64, 128, 256, 512)]
        fit, own = (float(v.strip().rstrip("%")) / 100 for v in row.split("|")[2:4])
        assert fit == pytest.approx(math.sqrt(np.sum(c ** 2 * np.square(sd[:4])) / 2), rel=0.15)
        assert own == pytest.approx(sd[4] / math.sqrt(2), abs=5e-5)
