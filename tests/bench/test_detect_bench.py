"""`stablelab detect-bench`: the interface, the pure analysis by hand, and the issue's verdicts on
the quick suite (fast path) and the full suite (slow)."""

import json
import math

import pytest

from stablelab.bench.detect import (DETECTOR_SETS, damage_point, damage_ratio, detection_benchmark,
                                    incidents_of, parse_detectors)
from stablelab.errors import UsageError


def test_incidents_group_flags_less_than_the_gap_apart():
    assert incidents_of([3, 10, 60, 200, 230], gap=50) == [(3, 60), (200, 230)]
    assert incidents_of([]) == []


def test_damage_point_and_ratio_by_hand():
    losses = [1.0] * 20 + [1.0, 1.5, 2.5, 2.6, 2.7, 2.8, 3.0]
    # pre-fault median 1.0; the median of the last (up to) 5 losses passes 2.0 at step 24
    # (window [1.0, 1.5, 2.5, 2.6, 2.7] has median 2.5)
    assert damage_point(losses, 20) == 24
    assert damage_point([1.0] * 20 + [float("nan")], 20) == 20
    assert damage_point([1.0] * 30, 20) is None
    assert damage_ratio({"19": 2.0, "50": 3.0}, 20) == pytest.approx(1.5)
    assert damage_ratio({"19": 2.0, "50": float("inf")}, 20) == math.inf
    assert damage_ratio({"19": 2.0, "50": 3.0}, 20, stopped_at=25) is None


def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys):
    from stablelab.cli import main

    with pytest.raises(UsageError, match="unknown detector set"):
        parse_detectors("stablelab,olmo")
    assert parse_detectors(None) == list(DETECTOR_SETS)
    assert main(["detect-bench", "--out", str(tmp_path), "--detectors", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
    assert main(["detect-bench", "--out", str(tmp_path), "--device", "cuda:7"]) == 2
    with pytest.raises(UsageError, match="workers"):
        detection_benchmark(tmp_path, quick=True, workers=-1)


def _check_verdicts(summary, out):
    ours = summary["detectors"]["stablelab"]
    assert ours["recall"] == 1.0, [s["name"] for s in summary["scenarios"]
                                   if s["kind"] == "fault" and not s["by_detector"]["stablelab"]["flagged"]]
    assert ours["false_warnings_per_1k"] <= 0.05, [
        (s["name"], s["by_detector"]["stablelab"]) for s in summary["scenarios"]
        if s["kind"] == "healthy" and s["by_detector"]["stablelab"]["false_warnings"]]
    assert ours["median_lead_steps"] is not None and ours["median_lead_steps"] > 0
    assert ours["damage_ratio_default_policy"] <= 1.5
    for name in DETECTOR_SETS:      # every anchor has its figures from the same runs
        assert set(summary["detectors"][name]) >= {"recall", "false_warnings_per_1k", "median_lead_steps",
                                                   "damage_ratio_default_policy"}
    stored = json.loads((out / "summary.json").read_text())
    assert stored["suites"] == summary["suites"]
    assert {"name", "kind", "fault_step", "flagged", "first_warning_step"} <= set(stored["scenarios"][0])
    assert "| stablelab |" in (out / "summary.md").read_text()
    assert "calibration" in (out / "report.html").read_text().lower()


def test_quick_suite_meets_the_issue_verdicts(tmp_path):
    """The quick suite, in this process: stablelab's defaults flag every planted fault, raise no
    false warning, warn before a runaway LR doubles the loss, and leave a 1000x spike harmless."""
    out = tmp_path / "quick"
    summary = detection_benchmark(out, quick=True, workers=2, progress=False)
    assert summary["suites"]["healthy_steps"] >= 5000
    _check_verdicts(summary, out)
    # resume: a second call reruns nothing and gives the same figures
    again = detection_benchmark(out, quick=True, workers=0, progress=False)
    assert again["detectors"] == summary["detectors"]


@pytest.mark.slow
def test_full_suite_meets_the_issue_verdicts(tmp_path):
    out = tmp_path / "full"
    summary = detection_benchmark(out, quick=False, progress=False)
    assert summary["suites"]["healthy_steps"] >= 20000
    _check_verdicts(summary, out)
