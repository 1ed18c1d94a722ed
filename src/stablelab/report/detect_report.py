"""The detection benchmark's report: summary.md (the table) and report.html (the table, the
per-scenario verdicts, and the loss curves of the faults with each rule's first warning marked)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from stablelab.report.html import Page, plt
from stablelab.io import atomic_write_bytes

HEADER = ("detectors", "action", "recall", "false warnings / 1k healthy steps", "median lead (runaway LR)",
          "damage 1000x spike", "median damage, point faults")


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


def _finite(x: Any) -> float:
    """A stored loss for plotting: null (non-finite when stored) and inf become NaN (a gap)."""
    return x if isinstance(x, (int, float)) and math.isfinite(x) else float("nan")


def detector_rows(summary: dict[str, Any]) -> list[list[str]]:
    return [[name, d["action"], _f(d["recall"]), _f(d["false_warnings_per_1k"]), _f(d["median_lead_steps"]),
             _f(d["damage_ratio_default_policy"]), _f(d["median_damage_ratio_point_faults"])]
            for name, d in summary["detectors"].items()]


def scenario_rows(summary: dict[str, Any], kind: str) -> tuple[list[str], list[list[str]]]:
    names = list(summary["detectors"])
    rows = []
    for s in summary["scenarios"]:
        if s["kind"] != kind:
            continue
        cells = [s["name"], s["family"]]
        if kind == "fault":
            cells += [s["fault"], _f(s["fault_step"])]
            for name in names:
                d = s["by_detector"][name]
                mark = "flagged" if d["flagged"] else "MISSED"
                first = d["first_warning_step"]
                lead = f", lead {d['lead_steps']}" if d.get("lead_steps") is not None else ""
                cells.append(f"{mark} @{first}{lead}; damage {_f(d['damage_ratio'])}")
        else:
            cells.append(_f(s["steps"]))
            cells += [_f(s["by_detector"][name]["false_warnings"]) for name in names]
        rows.append(cells)
    header = ["scenario", "family"] + (["fault", "step"] if kind == "fault" else ["steps"]) + names
    return header, rows


def markdown(summary: dict[str, Any]) -> str:
    suites = summary["suites"]
    lines = [f"# Detection benchmark ({'quick' if summary.get('quick') else 'full'} suite)", "",
             f"{suites['healthy_runs']} healthy runs ({suites['healthy_steps']} optimizer steps), "
             f"{suites['faults']} planted faults.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in detector_rows(summary)]
    for kind in ("fault", "healthy"):
        header, rows = scenario_rows(summary, kind)
        lines += ["", f"## {'Planted faults' if kind == 'fault' else 'Healthy runs: warning incidents'}", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _fault_figure(scenario_rows_: Sequence[dict[str, Any]], runs: dict[str, dict[str, Any]], names: Sequence[str]):
    faults = [s for s in scenario_rows_ if s["kind"] == "fault"]
    columns = 3
    rows = max(1, math.ceil(len(faults) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.6 * rows), squeeze=False)
    colours = dict(zip(names, ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#ff7f0e")))
    for ax, s in zip(axes.flat, faults):
        run = runs[s["name"]]
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
        ax.set_title(s["name"], fontsize=9)
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
    page.heading("Verdicts, side by side on the same runs")
    page.table(HEADER, detector_rows(summary))
    page.paragraph("Recall: faults with a warning within their window. False warnings: warning incidents "
                   "(warnings less than 50 steps apart are one) per 1,000 healthy steps. Lead: steps from "
                   "the first warning to the loss doubling (positive = warned before). Damage: probe loss "
                   "30 steps after the fault over the loss before it, under each rule's own default action "
                   "(stablelab: its default policy; OLMo-core: skip; ZClip: clip; the others only log).",
                   "meta")
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
