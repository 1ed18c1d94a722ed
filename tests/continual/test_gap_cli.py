"""`stablelab gap`: a tiny run writes the report, summary and histories; bad input is a UsageError."""

import argparse
import json

import numpy as np
import pytest

from stablelab.continual.metrics import min_acc, wc_acc
from stablelab.errors import UsageError
from stablelab.studies import gap


def parse(*argv):
    parser = argparse.ArgumentParser()
    gap.configure(parser)
    return parser.parse_args(list(argv))


def test_tiny_gap_run_writes_report_summary_and_histories(tmp_path):
    out = tmp_path / "gap"
    args = parse("--out", str(out), "--benchmarks", "split-digits,rotated-digits", "--learners",
                 "finetune,replay", "--tasks", "2", "--iterations-per-task", "6", "--seeds", "1",
                 "--eval-subset", "20")
    assert gap.run(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 4
    histories = np.load(out / "histories.npz")
    for run in summary["runs"]:
        key = f"{run['benchmark']}/{run['learner']}/seed{run['seed']}"
        acc, task = histories[key + "/acc"], histories[key + "/training_task"]
        assert acc.shape == (12, 2)  # 2 tasks x 6 iterations, evaluated every iteration
        np.testing.assert_array_equal(task, np.repeat([0, 1], 6))
        assert np.isnan(acc[:6, 1]).all()
        # the summary's numbers are the metrics of the stored history
        assert run["min_acc"] == pytest.approx(min_acc(acc, task))
        assert run["wc_acc"] == pytest.approx(wc_acc(acc, task))
        assert run["task1_gap"]["minimum"] == pytest.approx(np.min(acc[6:, 0]))
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # 2 figures per benchmark
    assert "min-ACC" in html and "WF^10" in html and "src=\"http" not in html


@pytest.mark.parametrize("argv, message", [
    (["--learners", "finetune,sgd"], "unknown learners sgd"),
    (["--benchmarks", "mnist"], "unknown benchmarks mnist"),
    (["--tasks", "3"], "split-digits needs --tasks dividing"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--momentum", "1.0"], "--momentum"),
    (["--device", "nosuchdevice"], "--device"),
])
def test_bad_input_is_a_one_line_usage_error(tmp_path, argv, message):
    with pytest.raises(UsageError, match=message):
        gap.run(parse("--out", str(tmp_path), *argv))
    assert not (tmp_path / "report.html").exists()


def test_monitor_option_logs_runs_without_changing_training(tmp_path):
    common = ["--benchmarks", "split-digits", "--learners", "ewc,replay", "--tasks", "2",
              "--iterations-per-task", "5", "--seeds", "1", "--eval-subset", "20"]
    assert gap.run(parse("--out", str(tmp_path / "plain"), *common)) == 0
    assert gap.run(parse("--out", str(tmp_path / "watched"), *common, "--monitor")) == 0
    plain = np.load(tmp_path / "plain" / "histories.npz")
    watched = np.load(tmp_path / "watched" / "histories.npz")
    for key in plain.files:  # observing must not alter training (no non-finite steps to skip here)
        np.testing.assert_array_equal(plain[key], watched[key])
    for learner in ("ewc", "replay"):
        run_dir = tmp_path / "watched" / "monitor" / "split-digits" / learner / "seed0"
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert rows and (run_dir / "done").exists()
        assert max(row["step"] for row in rows) <= 9  # 2 tasks x 5 iterations, steps from 0
        assert all("grad_norm" in row for row in rows)
