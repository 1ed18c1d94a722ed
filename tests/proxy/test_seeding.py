"""Seeds where they pay: a study adds seeds when its one-seed backtest is too loose to plan on."""

import json

import pytest

from stablelab.analysis import seeding
from stablelab.analysis.seeding import median_interval_width, seeds_for
from stablelab.cli import main


def _point(lo, hi, predicted=2.0, quantity="final_loss", calibrated=True):
    return {"quantity": quantity, "interval": [lo, hi], "predicted": predicted, "calibrated": calibrated}


def test_median_interval_width_and_the_decision_by_hand():
    # widths (hi - lo) / predicted: 0.1, 0.2, 0.3 -> median 0.2; the logit, an uncalibrated loss and a
    # bound do not count
    points = [_point(1.9, 2.1), _point(1.8, 2.2), _point(1.7, 2.3), _point(1.0, 50.0, quantity="attn_logit"),
              _point(0.1, 9.0, calibrated=False), _point(2.0, None)]
    assert median_interval_width(points) == pytest.approx(0.2)
    assert seeds_for({"points": points}, 1, 2) == (2, seeds_for({"points": points}, 1, 2)[1])
    assert "20% wide" in seeds_for({"points": points}, 1, 2)[1]
    assert seeds_for({"points": points}, 1, 2, loose=0.25) == (1, None)   # tight enough
    assert seeds_for({"points": points}, 2, 2) == (2, None)               # already that many seeds
    assert seeds_for({"points": points}, 1, 1) == (1, None)               # --seeds-when-loose 1: never
    assert seeds_for(None, 1, 2) == (1, None)                             # no backtest: nothing to say
    assert seeds_for({"points": [_point(0.1, 9.0, calibrated=False)]}, 1, 2) == (1, None)


ARGS = ["--widths", "32,64,96", "--lrs", "1e-3,1e-2,1e-1", "--variants", "baseline,qk_norm,z_loss", "--steps", "8",
        "--batch-size", "4", "--seq-len", "16", "--log-every", "4", "--prediction-step", "4", "--workers", "2",
        "--no-progress", "--interval", "0.5"]


@pytest.mark.parametrize("loose, seeds", [(0.0, 2), (1e9, 1)])
def test_a_loose_backtest_adds_a_seed_to_every_grid_point(tmp_path, monkeypatch, loose, seeds):
    """With the bar at 0 every calibrated backtest is loose: the grid runs again with 2 seeds (the
    first seed's runs kept, not redone), the summary says why; with the bar out of reach, one seed."""
    monkeypatch.setattr(seeding, "LOOSE_INTERVAL_WIDTH", loose)
    out = tmp_path / "s"
    assert main(["proxy", *ARGS, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    ids = {r["run_id"] for r in summary["runs"]}
    assert len(ids) == 27 * seeds and {i.rsplit("_s", 1)[1] for i in ids} == {str(s) for s in range(seeds)}
    assert summary["seeding"]["asked"] == 1 and summary["seeding"]["seeds"] == seeds
    width = summary["seeding"]["backtest_interval_width"]
    assert width is not None and width > 0
    if seeds == 2:
        assert f"{100 * width:.0f}% wide" in summary["seeding"]["reason"]
        assert any(line.startswith("Seeds added:") for line in summary["findings"])
        first = {i: (out / "runs" / i / "result.json").stat().st_mtime_ns for i in ids if i.endswith("_s0")}
        assert main(["proxy", *ARGS, "--out", str(out)]) == 0        # resume: nothing retrained
        assert {i: (out / "runs" / i / "result.json").stat().st_mtime_ns for i in first} == first
    else:
        assert summary["seeding"]["reason"] is None
