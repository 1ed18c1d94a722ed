"""`stablelab grok` end to end on a tiny task: summary.json format, report, resume, usage errors."""

import json

import pytest
import torch

from stablelab.cli import main
from stablelab.store.run_store import load_metrics
from stablelab.nn import stable_max_cross_entropy
from stablelab.studies.grok import GrokConfig, build_model, build_task, steps_to_target, train_variant

VARIANTS = {"softmax_adamw", "softmax_adamw_wd", "stablemax_adamw", "softmax_orthogonal_adamw"}
TINY = ["--p", "11", "--steps", "20", "--hidden", "16", "--eval-every", "5", "--no-progress"]


def test_grok_writes_summary_and_report_and_resumes(tmp_path):
    out = tmp_path / "grok"
    assert main(["grok", *TINY, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["variants"]) == VARIANTS
    for name, result in summary["variants"].items():
        rows = load_metrics(out / "runs" / name)
        assert [r["step"] for r in rows] == [0, 5, 10, 15, 20]
        assert result["final_train_acc"] == rows[-1]["train_acc"]
        assert result["final_test_acc"] == rows[-1]["test_acc"]
        first = next((r["step"] for r in rows if r["test_acc"] >= 0.95), None)
        assert result["steps_to_95_test"] == first
        assert 0.0 <= result["max_softmax_collapse"] <= 1.0
    html = (out / "report.html").read_text()
    assert html.count("<img") == 3 and "softmax_orthogonal_adamw" in html

    done = out / "runs" / "softmax_adamw" / "done"
    stamp = done.stat().st_mtime_ns
    assert main(["grok", *TINY, "--out", str(out)]) == 0  # same config: read back, not retrained
    assert done.stat().st_mtime_ns == stamp
    assert main(["grok", *TINY, "--lr", "0.02", "--out", str(out)]) == 0  # changed config: retrained
    assert done.stat().st_mtime_ns != stamp


@pytest.mark.parametrize("flags", [["--task", "div"], ["--dtype", "float16"], ["--steps", "0"],
                                   ["--softmax-dtype", "int8"]])
def test_bad_input_exits_with_status_2(tmp_path, flags, capsys):
    assert main(["grok", *TINY, *flags, "--out", str(tmp_path)]) == 2
    assert "stablelab grok: error:" in capsys.readouterr().err


def test_steps_to_target_is_the_first_crossing():
    rows = [{"step": 0, "test_acc": 0.1}, {"step": 10, "test_acc": 0.96}, {"step": 20, "test_acc": 0.5}]
    assert steps_to_target(rows) == 10
    assert steps_to_target(rows, target=0.97) is None


def test_variants_share_the_initialisation():
    config = GrokConfig(p=7, steps=0, hidden=(8,), eval_every=1)
    rows = {v: train_variant(config, v)[1][0] for v in ("softmax_adamw", "softmax_orthogonal_adamw")}
    assert rows["softmax_adamw"]["train_loss"] == rows["softmax_orthogonal_adamw"]["train_loss"]


def test_float64_run_logs_the_float64_loss_of_its_initial_weights():
    config = GrokConfig(p=7, steps=2, hidden=(8,), dtype="float64", eval_every=1)
    task = build_task(config, "cpu")
    model = build_model(config, task, "cpu")
    assert task.x_train.dtype == torch.float64 and next(model.parameters()).dtype == torch.float64
    expected = stable_max_cross_entropy(model(task.x_train), task.y_train).item()
    result, rows = train_variant(config, "stablemax_adamw")
    assert len(rows) == 3 and not result["diverged"]
    assert rows[0]["train_loss"] == expected
