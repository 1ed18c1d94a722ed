"""`stablelab lowbit`: the quick study end to end through the CLI, resume, and bad input (exit 2)."""

from __future__ import annotations

import json
import time

import pytest

from stablelab.cli import main


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("lowbit")
    started = time.perf_counter()
    status = main(["lowbit", "--out", str(out), "--quick", "--no-progress"])
    return out, status, time.perf_counter() - started


def test_quick_study_writes_the_interface(quick):
    out, status, seconds = quick
    assert status == 0
    assert seconds < 300  # issue 13: --quick within 5 minutes on 2 cores
    summary = json.loads((out / "summary.json").read_text())
    runs = summary["binary"]["runs"]
    assert {r["estimator"] for r in runs} == {"ste", "reste"}
    for r in runs:
        assert {"estimator", "o", "seed", "test_acc", "estimating_error", "gradient_stability"} <= set(r)
        assert 0.0 <= r["test_acc"] <= 1.0 and r["estimating_error"] >= 0 and r["gradient_stability"] >= 0
    bytes_per_param = summary["states8bit"]["bytes_per_param"]
    assert bytes_per_param["fp32"] == 8.0
    assert bytes_per_param["8bit"] <= 2.1
    assert summary["states8bit"]["comparison"] and summary["int4"]["sweep"]
    assert {(r["optimizer"], r["precision"]) for r in summary["int4"]["sweep"]} == {
        (o, p) for o in ("adamw", "spam", "stable_spam") for p in ("fp32", "int4")}
    html = (out / "report.html").read_text()
    assert "<img" in html and "http://" not in html.split("<body")[-1]  # self-contained
    assert "LR sensitivity" in (out / "summary.md").read_text()


def test_rerun_reads_finished_runs_back(quick):
    out, _, _ = quick
    done = sorted((out / "runs").rglob("done"))
    stamps = [p.stat().st_mtime_ns for p in done]
    assert main(["lowbit", "--out", str(out), "--quick", "--no-progress"]) == 0
    assert [p.stat().st_mtime_ns for p in done] == stamps  # nothing retrained


@pytest.mark.parametrize("flags, message", [(["--weight-bits", "9"], "weight-bits"),
                                            (["--activation-bits", "1"], "activation-bits"),
                                            (["--reste-o", "0.5"], "reste-o"),
                                            (["--group-size", "7"], "group")])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, flags, message):
    status = main(["lowbit", "--out", str(tmp_path / "x"), "--quick", "--no-progress", *flags])
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "x" / "runs").exists()  # refused before any run


@pytest.mark.slow
def test_full_study(tmp_path):
    """The full study (about 10 minutes on 2 loaded cores): every section, several seeds."""
    assert main(["lowbit", "--out", str(tmp_path), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["binary"]["runs"]) == 3 * 5
    assert all(r["seeds"] == 2 for r in summary["states8bit"]["comparison"])
    assert len(summary["int4"]["runs"]) == 3 * 2 * 5 * 2
