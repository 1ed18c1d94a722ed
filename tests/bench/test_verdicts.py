"""The detection benchmark's scoring as it now means what it says: non-finite values survive storage
and reach every rule, the anchors run as their trainers do, recall is chance-corrected against the
healthy twin, intervals are the textbook ones, and the docs' table is the one summary.json gives."""

import json
import math
from pathlib import Path

import pytest

from stablelab.bench.detect import AnchorHook, split_seeds
from stablelab.bench.scenarios import SCENARIOS, run_scenario, suite, twin_of
from stablelab.bench.scoring import anchor_decisions
from stablelab.bench.verdicts import (aggregate, damage_step_vs_twin, damage_vs_twin, harm_unguarded, is_harmless,
                                      poisson_rate_interval, score_fault, wilson_interval)
from stablelab.errors import UsageError
from stablelab.io import atomic_write_json, atomic_write_json_exact, read_json, read_json_exact

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _rows_with_a_nan(n=80, nan_at=70):
    rows = [{"step": t, "loss": 2.0 + 0.01 * (t % 7), "grad_norm": 1.0 + 0.01 * (t % 5)} for t in range(n)]
    rows[nan_at]["loss"] = float("nan")
    rows[nan_at]["grad_norm"] = float("nan")
    return rows


def test_a_stored_nan_reaches_olmo_core_and_lightning(tmp_path):
    rows = _rows_with_a_nan()
    atomic_write_json_exact(tmp_path / "run.json", {"rows": rows})
    back = read_json_exact(tmp_path / "run.json")["rows"]
    assert math.isnan(back[70]["loss"]) and back[:70] == rows[:70]
    assert 70 in anchor_decisions("olmo_core", back)[0]
    assert anchor_decisions("lightning", back) == ([70], 70)  # flags and stops the run there
    assert anchor_decisions("megatron", back)[1] == 70  # the fatal NaN check
    # what the old storage did: NaN became null, and the rules read "no value"
    atomic_write_json(tmp_path / "old.json", {"rows": rows})
    old = read_json(tmp_path / "old.json")["rows"]
    assert old[70]["loss"] is None and 70 not in anchor_decisions("olmo_core", old)[0]


def test_textbook_intervals():
    # Wilson 95% for 0/10: [0, 0.2775]; for 5/10: [0.2366, 0.7634] (Newcombe 1998, table I)
    assert wilson_interval(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)
    # exact Poisson 95% upper bound of a zero count is 3.689 (Garwood 1936); per 1k of 10,000 steps
    assert poisson_rate_interval(0, 10000) == pytest.approx([0.0, 0.3689], abs=1e-4)
    low, high = poisson_rate_interval(4, 1000)
    assert low == pytest.approx(1.0899, abs=1e-3) and high == pytest.approx(10.2416, abs=1e-3)


class _Fault:
    fault_step, window, kind, fault = 100, 20, "fault", "grad_spike"


def _run(flags_at, twin_at, losses=None, twin_losses=None, stop=None):
    events = [{"step": s, "kind": "grad_spike", "severity": "warning"} for s in flags_at]
    part = {"events": events, "losses": losses or [1.0] * 200, "probe_losses": {"130": 1.2},
            "stopped_at": stop}
    twin = {"events": [{"step": s, "kind": "x", "severity": "warning"} for s in twin_at],
            "losses": twin_losses or [1.0] * 200, "probe_losses": {"130": 1.0}, "rows": []}
    return {"default": part, "warn_only": part, "twin": twin}


def test_recall_is_credited_only_where_the_twin_is_quiet():
    hit = score_fault("stablelab", _Fault, _run([105], []))
    assert hit["credited"] and hit["first_warning_step"] == 105 and hit["damage_ratio"] == pytest.approx(1.2)
    chance = score_fault("stablelab", _Fault, _run([105], [110]))
    assert chance["flagged"] and chance["twin_warned"] and not chance["credited"]
    early = score_fault("stablelab", _Fault, _run([10, 40, 105], []))
    assert early["warnings_before_fault"] == 1 and early["credited"]  # 10 and 40: one incident
    stopped = score_fault("stablelab", _Fault, _run([50, 105], [], stop=50))
    assert stopped["stopped_before_fault"] and not stopped["flagged"] and stopped["damage_ratio"] is None


def test_damage_and_lead_are_measured_against_the_twin():
    twin = [1.0] * 100 + [0.9] * 100
    losses = [1.0] * 100 + [0.9, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0] + [3.0] * 93
    # the median of the last 5 losses against 2 x the twin's (0.9): at 104 [0.9, 1.0, 1.5, 2.0, 2.5] has
    # median 1.5 <= 1.8; at 105 [1.0, 1.5, 2.0, 2.5, 3.0] has 2.0 > 1.8
    assert damage_step_vs_twin(losses, twin, 100) == 105
    assert damage_step_vs_twin([1.0] * 100 + [float("nan")], twin, 100) == 100
    assert damage_step_vs_twin(twin, twin, 100) is None
    run = _run([102], [], losses=losses, twin_losses=twin)
    assert score_fault("stablelab", _Fault, run)["lead_steps"] == 3
    assert damage_vs_twin({"probe_losses": {"130": float("inf")}}, {"probe_losses": {"130": 1.0}}, 100) == math.inf


def test_recall_over_the_faults_that_did_harm_leaves_out_the_harmless_ones():
    """A point fault whose unguarded run ends 30 steps on within 5% of its twin did no harm: the
    second recall leaves it out (and says how many were left out); a slow fault counts whatever its
    loss says, and a non-finite probe is harm."""
    harmless = _run([], [])
    harmless["warn_only"] = {**harmless["warn_only"], "probe_losses": {"130": 1.03}}
    assert harm_unguarded(_Fault, harmless) == pytest.approx(1.03)
    assert is_harmless(_Fault, 1.03) and not is_harmless(_Fault, 1.2) and not is_harmless(_Fault, math.inf)

    class _Drift(_Fault):
        fault = "logit_drift"

    assert not is_harmless(_Drift, 1.0)
    entries = []
    for flags, harmless_fault in (([105], False), ([], True), ([103], False)):
        entries.append({"kind": "fault", "fault": "grad_spike", "name": "f", "seed": 100, "harmless": harmless_fault,
                        "by_detector": {"stablelab": score_fault("stablelab", _Fault, _run(flags, []))}})
    figures = aggregate(entries, "stablelab")
    assert figures["recall"] == pytest.approx(2 / 3) and figures["recall_harmful"] == 1.0
    assert figures["harmless_faults"] == 1 and figures["warned_harmless_faults"] == 0
    assert figures["recall_harmful_ci"] == pytest.approx(wilson_interval(2, 2))


def test_splits_are_disjoint_and_the_calibration_faults_differ():
    seeds = split_seeds(3, 2)
    assert not set(seeds["calibration"]) & set(seeds["heldout"]) and len(seeds["heldout"]) == 3
    with pytest.raises(UsageError):
        split_seeds(0, 1)
    held, cal = suite(True, "heldout"), suite(True, "calibration")
    for a, b in zip(held, cal):
        if a.kind == "fault" and a.fault_step >= 100:
            assert b.fault_step == a.fault_step - 30
        if "factor" in a.settings and a.kind == "fault":
            assert b.settings["factor"] == pytest.approx(0.8 * a.settings["factor"])
    twin = twin_of(SCENARIOS["attn_logit_growth"])
    assert twin.kind == "healthy" and twin.settings["lr"] == 3e-3 and twin.steps == 300


@pytest.mark.parametrize("anchor", ["olmo_core", "megatron", "lightning", "llm_foundry"])
def test_anchors_on_a_nan_batch_as_their_trainers_run_them(anchor):
    """The nan_batch fault at a held-out seed, each rule live as in production (the helper facts in
    bench/anchors: OLMo-core flags it but its step factor 0 lets the NaN reach the weights; Megatron
    and Lightning stop there; llm-foundry never flags a NaN)."""
    scenario = SCENARIOS["nan_batch"]
    from stablelab.bench.anchors import ANCHORS

    hook = AnchorHook(anchor) if anchor == "olmo_core" else AnchorHook(None, clip=ANCHORS[anchor].production_clip)
    trace = run_scenario(scenario, hook, seed=100)
    flags, stop = anchor_decisions(anchor, hook.rows)
    if anchor == "olmo_core":
        assert 200 in flags and trace.diverged  # flagged, yet the weights went NaN
    elif anchor in ("megatron", "lightning"):
        assert stop == 200
    else:
        assert 200 not in flags and stop is None


def test_the_docs_table_is_the_one_summary_json_gives():
    from stablelab.report.detect_report import headline

    summary = json.loads((DOCS / "detect_bench" / "summary.json").read_text())
    assert headline(summary) in (DOCS / "monitor.md").read_text()
    assert len(summary["seeds"]["heldout"]) >= 3
    assert not set(summary["seeds"]["heldout"]) & set(summary["seeds"]["calibration"])
