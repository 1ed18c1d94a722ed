"""The detection benchmark's report: summary.md (the table) and report.html (the table, the
per-scenario verdicts, and the loss curves of the faults with each rule's first warning marked)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from stablelab.report.html import Page, plt
from stablelab.io import atomic_write_bytes

HEADER = ("rule", "action", "recall (95% CI) [seeds]", "recall, faults that did harm (95% CI)",
          "false warnings / 1k steps (95% CI)",
          "lead: runaway LR, MLP", "lead: runaway LR, LM", "damage 1000x spike (worst)",
          "median damage, point faults (runs that went on)", "point-fault runs damaged > 2x",
          "runs stopped: before / at or after the fault")
TUNED_HEADER = ("rule", "tuned on calibration", "recall (95% CI)", "false warnings / 1k (95% CI)",
                "calibration recall", "calibration false / 1k")


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}g}"
    return str(value)


def _ci(value: Any, interval: Any, spread: Any = None) -> str:
    text = _f(value)
    if interval:
        text += f" ({_f(interval[0], 2)}-{_f(interval[1], 2)})"
    if spread:
        text += f" [{_f(spread[0], 2)}-{_f(spread[1], 2)}]"
    return text


def _finite(x: Any) -> float:
    """A stored loss for plotting: null and inf become NaN (a gap)."""
    return x if isinstance(x, (int, float)) and math.isfinite(x) else float("nan")


def _lead(d: dict[str, Any], scenario: str) -> str:
    lead = d.get("lead_steps_by_scenario", {}).get(scenario)
    if not lead:
        return "-"
    per_seed = ", ".join(_f(x) for x in lead["per_seed"])
    return f"{_f(lead['median'])} ({per_seed})"


def detector_rows(summary: dict[str, Any]) -> list[list[str]]:
    return [[name, d["action"], _ci(d["recall"], d.get("recall_ci"), d.get("recall_by_seed")),
             _ci(d.get("recall_harmful"), d.get("recall_harmful_ci")),
             _ci(d["false_warnings_per_1k"], d.get("false_warnings_per_1k_ci")),
             _lead(d, "lr_runaway"), _lead(d, "lr_runaway_lm"),
             _f(d["damage_ratio_default_policy"]), _f(d["median_damage_ratio_point_faults"]),
             "{} of {}".format(*d["damaged_point_faults"]) if d.get("damaged_point_faults") else "-",
             f"{_f(d.get('stops_before_fault'))} / {_f(d.get('stops_at_or_after_fault'))}"]
            for name, d in summary["detectors"].items()]


def tuned_rows(summary: dict[str, Any]) -> list[list[str]]:
    calibration = (summary.get("calibration") or {}).get("tuned", {})
    rows = []
    for name, d in (summary.get("tuned") or {}).items():
        c = calibration.get(name, {})
        setting = ", ".join(f"{k}={v:g}" for k, v in d.get("settings", {}).items())
        rows.append([name, setting, _ci(d["recall"], d.get("recall_ci")),
                     _ci(d["false_warnings_per_1k"], d.get("false_warnings_per_1k_ci")),
                     _f(c.get("recall")), _f(c.get("false_warnings_per_1k"))])
    return rows


def calibration_rows(summary: dict[str, Any]) -> list[list[str]]:
    calibration = summary.get("calibration") or {}
    return [[name, _ci(d["recall"], d.get("recall_ci")), _ci(d["false_warnings_per_1k"], d.get("false_warnings_per_1k_ci"))]
            for name, d in calibration.get("detectors", {}).items()]


def scenario_rows(summary: dict[str, Any], kind: str) -> tuple[list[str], list[list[str]]]:
    names = list(summary["detectors"])
    rows = []
    for s in summary["scenarios"]:
        if s["kind"] != kind:
            continue
        cells = [s["name"], _f(s["seed"]), s["family"]]
        if kind == "fault":
            harm = _f(s.get("harm_unguarded")) + (" (harmless)" if s.get("harmless") else "")
            cells += [s["fault"], _f(s["fault_step"]), harm]
            for name in names:
                d = s["by_detector"][name]
                mark = ("credited" if d["credited"] else "chance" if d["flagged"] else
                        "stopped before" if d["stopped_before_fault"] else "MISSED")
                lead = f", lead {d['lead_steps']}" if d.get("lead_steps") is not None else ""
                cells.append(f"{mark} @{_f(d['first_warning_step'])}{lead}; damage {_f(d['damage_ratio'])}")
        else:
            cells.append(_f(s["steps"]))
            cells += [_f(s["by_detector"][name]["false_warnings"]) for name in names]
        rows.append(cells)
    header = ["scenario", "seed", "family"] + (["fault", "step", "harm left alone"] if kind == "fault" else ["steps"]) + names
    return header, rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def headline(summary: dict[str, Any]) -> str:
    """The held-out table with the tuned anchors and the calibration split beside it: the block
    docs/monitor.md shows (tests/bench check that the docs hold exactly this)."""
    suites, seeds = summary["suites"], summary["seeds"]
    lines = [f"Held-out split: seeds {', '.join(map(str, seeds['heldout']))} "
             f"({'quick' if summary.get('quick') else 'full'} suite: {suites['faults']} fault runs, "
             f"{suites['healthy_runs']} healthy runs of {suites['healthy_steps']} steps); thresholds and tuned "
             f"knobs from the calibration split, seeds {', '.join(map(str, seeds['calibration'])) or 'none'}.", ""]
    lines += _md_table(HEADER, detector_rows(summary))
    tuned = tuned_rows(summary)
    if tuned:
        lines += ["", "Each anchor tuned on the calibration split (its own knob; the highest recall at most "
                  "0.2 false warnings per 1k), scored held out:", ""]
        lines += _md_table(TUNED_HEADER, tuned)
    cal = calibration_rows(summary)
    if cal:
        lines += ["", "The same rules at their defaults on the calibration split:", ""]
        lines += _md_table(("rule", "recall (95% CI)", "false warnings / 1k (95% CI)"), cal)
    return "\n".join(lines) + "\n"


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Detection benchmark ({'quick' if summary.get('quick') else 'full'} suite)", "", headline(summary)]
    for kind in ("fault", "healthy"):
        header, rows = scenario_rows(summary, kind)
        lines += ["", f"## {'Planted faults' if kind == 'fault' else 'Healthy runs: warning incidents'} (held out)", ""]
        lines += _md_table(header, rows)
    if summary.get("idealised"):
        lines += ["", "## Where the benchmark idealises a rule", ""]
        lines += [f"- {name}: {text}" for name, text in summary["idealised"].items()]
    return "\n".join(lines) + "\n"


def _fault_figure(scenario_rows_: Sequence[dict[str, Any]], runs: dict[str, dict[str, Any]], names: Sequence[str]):
    first_seed = min(s["seed"] for s in scenario_rows_)
    faults = [s for s in scenario_rows_ if s["kind"] == "fault" and s["seed"] == first_seed]
    columns = 3
    rows = max(1, math.ceil(len(faults) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.6 * rows), squeeze=False)
    colours = dict(zip(names, ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#ff7f0e")))
    for ax, s in zip(axes.flat, faults):
        run = runs[(s["seed"], s["name"])]
        losses = run["warn_only"]["losses"]
        guarded = run["default"]["losses"]
        ax.plot(range(len(losses)), [_finite(x) for x in losses],
                color="grey", lw=0.8, label="no intervention")
        ax.plot(range(len(guarded)), [_finite(x) for x in guarded],
                color="black", lw=0.8, label="stablelab default policy")
        ax.axvline(s["fault_step"], color="black", ls=":", lw=1)
        for name in names:
            first = s["by_detector"][name]["first_warning_step"]
            if first is not None:
                ax.axvline(first, color=colours[name], lw=1.2, alpha=0.8, label=f"{name} first warning")
        ax.set_yscale("log")
        ax.set_title(f"{s['name']} (seed {s['seed']})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(faults):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def _calibration_figure(calibration: dict[str, Any]):
    curves = calibration["curves"]
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 2.8), squeeze=False)
    from stablelab.monitor.detectors import DETECTORS

    for ax, (kind, curve) in zip(axes.flat, curves.items()):
        values = [p["value"] for p in curve["points"]]
        ax.plot(values, [p["false_warnings_per_1k"] for p in curve["points"]], "o-", color="#d62728",
                label="false warnings / 1k")
        ax.set_xlabel(f"{kind}.{curve['setting']}", fontsize=8)
        ax.set_ylabel("false warnings / 1k healthy steps", fontsize=8, color="#d62728")
        twin = ax.twinx()
        twin.plot(values, [p["recall"] for p in curve["points"]], "s--", color="#1f77b4", label="recall")
        twin.set_ylim(-0.05, 1.05)
        twin.set_ylabel("fraction of all faults flagged", fontsize=8, color="#1f77b4")
        default = getattr(DETECTORS[kind](), curve["setting"])
        ax.axvline(default, color="black", ls=":", lw=1)
        ax.set_title(f"{kind} (default {default:g})", fontsize=9)
        ax.tick_params(labelsize=7)
        twin.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def write_report(out: Path, summary: dict[str, Any], scenarios: Sequence[Any], runs: dict[str, dict[str, Any]],
                 calibration: dict[str, Any] | None = None) -> Path:
    out = Path(out)
    atomic_write_bytes(out / "summary.md", markdown(summary).encode("utf-8"))
    names = list(summary["detectors"])
    page = Page("stablelab detection benchmark",
                f"{'quick' if summary.get('quick') else 'full'} suite: {summary['suites']['healthy_steps']} "
                f"healthy optimizer steps, {summary['suites']['faults']} planted faults")
    page.heading("Verdicts, held out, side by side")
    page.table(HEADER, detector_rows(summary))
    page.paragraph("Recall: faults warned within their window where the healthy twin (same seed, nothing "
                   "planted) was quiet in that window; a stop before the fault is a miss. 95% Wilson interval, "
                   "[range over seeds]. False warnings: incidents (warnings less than 50 steps apart are one) "
                   "per 1,000 healthy steps (healthy runs and the steps before each fault), 95% Poisson interval. "
                   "Lead, per scenario: from the first warning to the unguarded loss passing 2x its twin's "
                   "(median, then each seed). Damage: probe loss 30 steps after the fault over the twin's, in the "
                   "run the rule's trainer has (stablelab: default policy; OLMo-core: clip 1.0 + step factor 0; "
                   "ZClip: its clip; Megatron, llm-foundry: clip 1.0, log only; Lightning: unguarded until it stops).",
                   "meta")
    if tuned_rows(summary):
        page.heading("Anchors tuned on the calibration split, scored held out")
        page.table(TUNED_HEADER, tuned_rows(summary))
    if calibration_rows(summary):
        page.heading("Defaults on the calibration split")
        page.table(("rule", "recall (95% CI)", "false warnings / 1k (95% CI)"), calibration_rows(summary))
    page.heading("Planted faults")
    png = page.figure(_fault_figure(summary["scenarios"], runs, names), "loss curves of the planted faults")
    atomic_write_bytes(out / "faults.png", png)
    header, rows = scenario_rows(summary, "fault")
    page.table(header, rows)
    page.heading("Healthy runs: warning incidents")
    header, rows = scenario_rows(summary, "healthy")
    page.table(header, rows)
    if calibration:
        page.heading("Calibration: each detector alone, replayed at a grid of thresholds")
        png = page.figure(_calibration_figure(calibration), "calibration curves")
        atomic_write_bytes(out / "calibration.png", png)
        page.paragraph("Red: false warnings per 1,000 healthy steps; blue: fraction of all planted faults "
                       "this detector alone flags (each detector covers only some fault types). Dotted: "
                       "the default.", "meta")
    return page.write(out / "report.html")
