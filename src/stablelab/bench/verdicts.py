"""The detection benchmark's verdicts over seeds: per rule, recall, false warnings, lead and damage
on one split (calibration or held-out), with intervals and the spread over seeds; the anchors'
knobs tuned on the calibration split. Pure functions over the stored runs (bench/detect.py stores
them; docs/monitor.md gives the definitions).

Where each rule is read (the run its trainer would have had):
- stablelab: the default-policy run's live events;
- OLMo-core and ZClip: their live run (production clipping, skip or clip);
- Megatron and llm-foundry (log-only): the run clipped at 1.0 as their trainers do;
- Lightning (stop, no default clipping): the unguarded run, up to its stop;
- every rule's chance hits and damage reference: the fault's healthy twin (same seed and settings,
  nothing planted), clipped at 1.0 for the trainers that clip, else under stablelab's default
  policy."""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

from stablelab.bench.scoring import POINT_FAULTS, STABLELAB, anchor_decisions, incidents_of, stablelab_flags

# each anchor's own knob and the grid it is tuned over on the calibration split
TUNING: dict[str, tuple[str, tuple[float, ...]]] = {
    "olmo_core": ("sigma_factor", (2.0, 3.0, 4.0, 5.0, 6.0, 8.0)),
    "megatron": ("threshold", (1.5, 2.0, 3.0, 5.0, 10.0)),
    "llm_foundry": ("outlier_multiplier", (1.1, 1.25, 1.5, 2.0, 3.0)),
    "lightning": ("rtol", (0.25, 0.5, 1.0, 2.0, 4.0)),
    "zclip": ("z_thresh", (1.5, 2.0, 2.5, 3.0, 4.0, 6.0)),
}
TUNING_FALSE_LIMIT = 0.2  # false warnings per 1k healthy steps a tuned setting may have (calibration)
# a point fault whose unguarded run ends 30 steps later within this factor of its twin did no harm
HARMLESS_WITHIN = 1.05
_RUN_OF = {"olmo_core": "live:olmo_core", "zclip": "live:zclip", "megatron": "clip_1", "llm_foundry": "clip_1",
           "lightning": "warn_only"}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% Wilson score interval of a proportion (Wilson 1927); None without trials."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def poisson_rate_interval(count: int, exposure: float, per: float = 1000.0) -> list[float] | None:
    """95% exact (Garwood) interval of a Poisson rate per `per` units of exposure; a zero count gets
    [0, 3.69 / exposure x per]."""
    if exposure <= 0:
        return None
    from scipy.stats import chi2

    low = 0.0 if count == 0 else chi2.ppf(0.025, 2 * count) / 2
    high = chi2.ppf(0.975, 2 * count + 2) / 2
    return [per * low / exposure, per * high / exposure]


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def damage_step_vs_twin(losses: Sequence[float | None], twin: Sequence[float | None], fault_step: int,
                        factor: float = 2.0) -> int | None:
    """First step at or after the fault where the median of the last 5 losses passes `factor` x the
    twin's median over the same steps, or the loss is non-finite; None if never."""
    bad = lambda x: x is None or not math.isfinite(x)  # noqa: E731
    for t in range(fault_step, min(len(losses), len(twin))):
        if bad(losses[t]):
            return t
        lo = max(fault_step, t - 4)
        mine = [x for x in losses[lo:t + 1] if not bad(x)]
        theirs = [x for x in twin[lo:t + 1] if not bad(x)]
        if len(mine) >= min(5, t - fault_step + 1) and theirs and statistics.median(mine) > factor * statistics.median(theirs):
            return t
    return None


def damage_vs_twin(run: dict[str, Any], twin: dict[str, Any], fault_step: int) -> float | None:
    """Probe loss 30 steps after the fault over the twin's at the same step (inf if non-finite);
    None when the run stopped before then."""
    key = str(fault_step + 30)
    if run.get("stopped_at") is not None and run["stopped_at"] <= fault_step + 30:
        return None
    after, healthy = run["probe_losses"].get(key), twin["probe_losses"].get(key)
    if after is None or healthy is None or not math.isfinite(healthy) or healthy <= 0:
        return None
    return after / healthy if math.isfinite(after) else math.inf


def harm_unguarded(scenario: Any, run: dict[str, Any]) -> float | None:
    """The fault's harm when nothing acts on it: the warn-only run's probe loss 30 steps after the
    fault over its twin's (`damage_vs_twin`); None where not measured."""
    if scenario.kind != "fault" or "warn_only" not in run or "twin" not in run:
        return None
    return damage_vs_twin(run["warn_only"], run["twin"], scenario.fault_step)


def is_harmless(scenario: Any, harm: float | None) -> bool:
    """A point fault (a spike, a bad batch, an LR jump) that left the unguarded run where its twin
    is (within HARMLESS_WITHIN): a warning on it would not have meant likely harm. The slow faults
    (runaway LR, logit drift, collapse, attention growth) are instabilities whatever the loss says
    30 steps on."""
    return scenario.fault in POINT_FAULTS and harm is not None and math.isfinite(harm) and harm <= HARMLESS_WITHIN


def _flags(name: str, run: dict[str, Any], source: str, settings: dict | None) -> tuple[list[int], int | None]:
    if name == STABLELAB:
        part = run[source]
        return stablelab_flags(part["events"]), part.get("stopped_at")
    return anchor_decisions(name, run[source]["rows"], settings)


def _twin_of(name: str, run: dict[str, Any]) -> str:
    """The twin a rule is compared with: clipped at 1.0 for the trainers that clip (ZClip clips with
    its own rule, whose max_grad_norm is 1.0), else the default-policy twin."""
    from stablelab.bench.anchors import ANCHORS

    clips = name in ANCHORS and (ANCHORS[name].production_clip or ANCHORS[name].action == "clip")
    return "twin_clip_1" if clips and "twin_clip_1" in run else "twin"


def score_fault(name: str, scenario: Any, run: dict[str, Any], settings: dict | None = None) -> dict[str, Any]:
    """One rule on one fault run at one seed."""
    source = "default" if name == STABLELAB else _RUN_OF[name]
    flags, stop = _flags(name, run, source, settings)
    twin = _twin_of(name, run)
    twin_flags, _ = _flags(name, run, twin, settings)
    lo, hi = scenario.fault_step, scenario.fault_step + scenario.window
    before = [s for s in flags if s < lo]
    stopped_before = stop is not None and stop < lo
    flagged = not stopped_before and any(lo <= s <= hi for s in flags)
    twin_hit = any(lo <= s <= hi for s in twin_flags)
    after = [s for s in flags if s >= lo]
    damage_step = damage_step_vs_twin(run["warn_only"]["losses"], run["twin"]["losses"], lo)
    first = after[0] if after and not stopped_before else None
    credited = flagged and not twin_hit
    return {"flagged": flagged, "twin_warned": twin_hit, "credited": credited, "first_warning_step": first,
            "warnings_before_fault": len(incidents_of(before)), "stopped_before_fault": stopped_before,
            "pre_fault_steps": lo,
            "lead_steps": (damage_step - first) if credited and damage_step is not None and first is not None else None,
            "damage_step_unguarded": damage_step,
            "damage_ratio": None if stop is not None and stop <= lo + 30 else damage_vs_twin(run[source], run[twin], lo),
            "stopped_at": stop}


def score_healthy(name: str, run: dict[str, Any], settings: dict | None = None) -> dict[str, Any]:
    flags, _ = _flags(name, run, "default", settings)
    return {"false_warnings": len(incidents_of(flags)), "first_warning_step": flags[0] if flags else None,
            "steps": len(run["default"]["losses"])}


def aggregate(entries: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    """A rule's figures over (scenario, seed) entries of one split."""
    faults = [e for e in entries if e["kind"] == "fault"]
    healthy = [e for e in entries if e["kind"] == "healthy"]
    mine = lambda e: e["by_detector"][name]  # noqa: E731
    credited = sum(mine(e)["credited"] for e in faults)
    harmful = [e for e in faults if not e.get("harmless")]
    credited_harmful = sum(mine(e)["credited"] for e in harmful)
    false = sum(mine(e)["false_warnings"] for e in healthy) + sum(mine(e)["warnings_before_fault"] for e in faults)
    steps = sum(mine(e)["steps"] for e in healthy) + sum(mine(e)["pre_fault_steps"] for e in faults)
    by_seed: dict[int, dict[str, list]] = {}
    for e in entries:
        seed = by_seed.setdefault(e["seed"], {"credited": [], "false": 0, "steps": 0})
        if e["kind"] == "fault":
            seed["credited"].append(mine(e)["credited"])
            seed["false"] += mine(e)["warnings_before_fault"]
            seed["steps"] += mine(e)["pre_fault_steps"]
        else:
            seed["false"] += mine(e)["false_warnings"]
            seed["steps"] += mine(e)["steps"]
    recalls = [sum(v["credited"]) / len(v["credited"]) for v in by_seed.values() if v["credited"]]
    rates = [1000.0 * v["false"] / v["steps"] for v in by_seed.values() if v["steps"]]
    leads: dict[str, list] = {}
    for e in faults:
        if e["fault"] in ("lr_runaway", "attn_logit_growth", "logit_drift"):
            leads.setdefault(e["name"], []).append(mine(e)["lead_steps"])
    damage_1000x = [mine(e)["damage_ratio"] for e in faults if e["fault"] == "grad_spike"
                    and e.get("size") == 1000 and mine(e)["damage_ratio"] is not None]
    point = [mine(e)["damage_ratio"] for e in faults if e["fault"] in POINT_FAULTS and mine(e)["damage_ratio"] is not None]
    return {
        "recall": credited / len(faults) if faults else None,
        "recall_ci": wilson_interval(credited, len(faults)),
        "recall_raw": sum(mine(e)["flagged"] for e in faults) / len(faults) if faults else None,
        # recall over the faults that did harm when left alone (is_harmless), and how many did none
        "recall_harmful": credited_harmful / len(harmful) if harmful else None,
        "recall_harmful_ci": wilson_interval(credited_harmful, len(harmful)),
        "harmless_faults": len(faults) - len(harmful),
        "warned_harmless_faults": sum(mine(e)["credited"] for e in faults if e.get("harmless")),
        "chance_rate": sum(mine(e)["twin_warned"] for e in faults) / len(faults) if faults else None,
        "recall_by_seed": [min(recalls), max(recalls)] if recalls else None,
        "false_warnings_per_1k": 1000.0 * false / steps if steps else None,
        "false_warnings_per_1k_ci": poisson_rate_interval(false, steps),
        "false_warnings_per_1k_by_seed": [min(rates), max(rates)] if rates else None,
        "false_warning_incidents": false, "judged_steps": steps,
        "stops_before_fault": sum(mine(e)["stopped_before_fault"] for e in faults),
        # a stop at or after the fault ends the run: no damage is measured for it, so the damage
        # figures cover the runs that went on, and this count says how many did not
        "stops_at_or_after_fault": sum(mine(e)["stopped_at"] is not None and not mine(e)["stopped_before_fault"]
                                       for e in faults),
        "lead_steps_by_scenario": {k: {"median": _median([x for x in v if x is not None]), "per_seed": v}
                                   for k, v in leads.items()},
        "median_lead_steps": _median([x for v in leads.values() for x in v if x is not None]),
        "damage_ratio_default_policy": max(damage_1000x) if damage_1000x else None,
        "median_damage_ratio_point_faults": _median(point),
        # point-fault runs left more than twice as bad as their twin (a non-finite probe counts)
        "damaged_point_faults": [sum(d > 2 for d in point), len(point)],
    }


def score_split(scenarios: Sequence[Any], runs: dict[tuple[int, str], dict[str, Any]], seeds: Sequence[int],
                names: Sequence[str], settings: dict[str, dict] | None = None) -> dict[str, Any]:
    """Every (scenario, seed) entry and each rule's aggregate; settings: per-anchor overrides."""
    from stablelab.bench.anchors import ANCHORS

    settings = settings or {}
    entries = []
    for seed in seeds:
        for scenario in scenarios:
            run = runs[(seed, scenario.name)]
            entry = {"name": scenario.name, "seed": seed, "kind": scenario.kind, "family": scenario.family,
                     "fault": scenario.fault, "fault_step": scenario.fault_step, "window": scenario.window,
                     "steps": scenario.steps, "size": scenario.settings.get("factor"), "by_detector": {}}
            if scenario.kind == "fault":
                entry["harm_unguarded"] = harm_unguarded(scenario, run)
                entry["harmless"] = is_harmless(scenario, entry["harm_unguarded"])
            for name in names:
                if scenario.kind == "fault":
                    entry["by_detector"][name] = score_fault(name, scenario, run, settings.get(name))
                else:
                    entry["by_detector"][name] = score_healthy(name, run, settings.get(name))
            main = entry["by_detector"][names[0]]
            entry["flagged"] = main.get("flagged", bool(main.get("false_warnings")))
            entry["first_warning_step"] = main.get("first_warning_step")
            entries.append(entry)
    detectors = {}
    for name in names:
        figures = aggregate(entries, name)
        figures["action"] = "default policy" if name == STABLELAB else (ANCHORS[name].action or "log only")
        if name in settings:
            figures["settings"] = settings[name]
        detectors[name] = figures
    healthy = [s for s in scenarios if s.kind == "healthy"]
    return {"suites": {"seeds": list(seeds), "healthy_runs": len(healthy) * len(seeds),
                       "healthy_steps": sum(len(runs[(seed, s.name)]["default"]["losses"])
                                            for seed in seeds for s in healthy),
                       "faults": sum(1 for s in scenarios if s.kind == "fault") * len(seeds)},
            "detectors": detectors, "scenarios": entries}


def tune_anchors(scenarios: Sequence[Any], runs: dict[tuple[int, str], dict[str, Any]], seeds: Sequence[int],
                 names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per anchor, the value of its knob (TUNING) with the highest recall on the calibration split
    among those at most TUNING_FALSE_LIMIT false warnings per 1k (ties: fewer false warnings); if
    none is that quiet, the quietest. Returns {anchor: {knob: value}}."""
    chosen: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in TUNING:
            continue
        knob, grid = TUNING[name]
        candidates = []
        for value in grid:
            figures = score_split(scenarios, runs, seeds, [name], {name: {knob: value}})["detectors"][name]
            candidates.append((value, figures["recall"] or 0.0, figures["false_warnings_per_1k"] or 0.0))
        quiet = [c for c in candidates if c[2] <= TUNING_FALSE_LIMIT]
        best = max(quiet, key=lambda c: (c[1], -c[2])) if quiet else min(candidates, key=lambda c: (c[2], -c[1]))
        chosen[name] = {knob: best[0]}
    return chosen
