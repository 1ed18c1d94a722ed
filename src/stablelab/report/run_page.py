"""`stablelab report RUN_DIR`: one run's signals and events as a self-contained HTML page.

Reads the run store (metrics from Parquet when the run is finished, else the live JSONL; events
from events.jsonl), draws every known signal that the run logged against the step with the
events marked as vertical lines (red: critical, orange: warning, blue dashed: interventions), and
writes RUN_DIR/report.html and RUN_DIR/summary.json (or under --out)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from stablelab.errors import UsageError
from stablelab.monitor.signal_registry import column

# the columns drawn, in order (titles and scales from the signals that declare them,
# monitor.signal_registry); a family ending in "_l" plots every layer
_PANEL_COLUMNS = ("loss", "grad_norm", "spike_ratio_max", "update_ratio_max", "attn_logit_max_l",
                  "log_z_mean", "softmax_collapse_fraction", "eps_ratio_min", "lr")
PANELS: list[tuple[str, str, bool]] = [
    (name, column(name).description + ("; max |log Z| dotted" if name == "log_z_mean" else ""),
     column(name).log_scale or name == "lr") for name in _PANEL_COLUMNS]
SEVERITY_COLOURS = {"critical": "#dc2626", "warning": "#f59e0b", "info": "#2563eb"}


def configure(parser) -> None:
    parser.add_argument("run_dir", help="a run folder written by the monitor or a study")
    parser.add_argument("--out", default=None, help="folder for report.html and summary.json (default: RUN_DIR)")
    parser.add_argument("--max-events", type=int, default=200, help="rows in the events table")


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and row.get("step") is not None:
            steps.append(int(row["step"]))
            values.append(float(value))
    return steps, values


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def summarise(rows: list[dict[str, Any]], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Plain facts about one run (what summary.json holds)."""
    counts = Counter(e.get("kind") for e in events)
    losses = [v for _, v in zip(*_series(rows, "loss"))]
    finite_losses = [v for v in losses if math.isfinite(v)]
    attn = [v for _, v in zip(*_series(rows, "attn_logit_max")) if math.isfinite(v)]
    first = {}
    for event in events:
        if event.get("severity") in ("warning", "critical"):
            first.setdefault(event.get("kind"), event.get("step"))
    return {
        "steps_logged": len(rows),
        "last_step": max((int(r["step"]) for r in rows if r.get("step") is not None), default=None),
        "final_loss": finite_losses[-1] if finite_losses else None,
        "min_loss": min(finite_losses) if finite_losses else None,
        "max_attn_logit": max(attn) if attn else None,
        "events": dict(counts),
        "first_step_by_kind": first,
        "skipped_steps": sum(int(r.get("skipped") or 0) for r in rows),
    }


def render(run_dir: Path, rows: list[dict[str, Any]], events: list[dict[str, Any]],
           config: dict[str, Any], max_events: int = 200, incidents: list[dict[str, Any]] | None = None,
           restarts: list[int] = (), result: dict[str, Any] | None = None):
    """restarts: the first step of every session after the first (a monitor folder continued)."""
    from stablelab.report.html import Page, plt

    summary = summarise(rows, events)
    page = Page(f"stablelab run report: {run_dir.name}",
                subtitle=f"{run_dir} - {summary['steps_logged']} logged steps, {len(events)} events")
    lines, warn = [], []
    for kind, step in sorted(summary["first_step_by_kind"].items(), key=lambda kv: kv[1]):
        lines.append(f"{kind}: first at step {step} ({summary['events'][kind]} events)")
        warn.append(True)
    if not lines:
        lines.append("no warnings or critical events")
        warn.append(False)
    if restarts:
        lines.append(f"restarted {len(restarts)} time(s): at step(s) {', '.join(map(str, restarts))} "
                     "(grey dotted lines); a step logged again after a restart shows the later session's value")
        warn.append(False)
    task = (result or {}).get("task_reason")
    if task:
        lines.append(f"task: {(result or {}).get('task') or 'undecided'} ({task})")
        warn.append((result or {}).get("task") is None)
    if summary["final_loss"] is not None:
        lines.append(f"final logged loss {summary['final_loss']:.4g} (min {summary['min_loss']:.4g})")
        warn.append(False)
    page.heading("Findings")
    page.findings(lines, warn)

    columns = _columns(rows)
    panels = []
    for key, title, log_scale in PANELS:
        if key.endswith("_l"):
            keys = sorted((c for c in columns if c.startswith(key) and c[len(key):].isdigit()),
                          key=lambda c: int(c[len(key):]))
        else:
            keys = [key] if key in columns else []
        if keys and any(_series(rows, k)[0] for k in keys):
            panels.append((keys, title, log_scale))
    if panels:
        fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.3 * len(panels)), sharex=True, squeeze=False)
        for ax, (keys, title, log_scale) in zip(axes[:, 0], panels):
            for key in keys:
                steps, values = _series(rows, key)
                label = key.replace("attn_logit_max_l", "layer ") if len(keys) > 1 else None
                positive = [v for v in values if math.isfinite(v) and v > 0]
                ax.plot(steps, values, lw=1.0, label=label, marker="." if len(steps) < 60 else None)
                if log_scale and positive:
                    ax.set_yscale("log")
            if keys == ["log_z_mean"] and "log_z_max" in columns:
                ax.plot(*_series(rows, "log_z_max"), lw=0.8, ls=":", color="grey")
            for event in events:
                colour = SEVERITY_COLOURS.get(event.get("severity"), "grey")
                style = "--" if event.get("severity") == "info" else "-"
                ax.axvline(event.get("step", 0), color=colour, lw=0.8, ls=style, alpha=0.7)
            for step in restarts:
                ax.axvline(step, color="grey", lw=1.2, ls=":")
            ax.set_title(title, fontsize=9, loc="left")
            if len(keys) > 1:
                ax.legend(fontsize=7, loc="upper left")
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        page.heading("Signals (events marked: red critical, orange warning, blue dashed intervention)")
        page.figure(fig, "signals with events")
    page.heading("Incidents")
    if incidents:
        page.table(["kind", "severity", "start", "peak", "end", "events", "after", "guard", "diagnosis"],
                   [[i.get("kind"), i.get("severity"), i.get("start"), i.get("peak"), i.get("end"),
                     i.get("n_events"), i.get("cause"), ", ".join(i.get("actions") or []),
                     i.get("first_message")] for i in incidents])
    else:
        page.paragraph("none" if incidents is not None else "no incidents.json (a run of an older version)")
    summary["incidents"] = len(incidents or [])
    page.heading("Events (raw)")
    if events:
        shown = events[:max_events]
        page.table(["step", "kind", "severity", "message"],
                   [[e.get("step"), e.get("kind"), e.get("severity"), e.get("message")] for e in shown])
        if len(events) > max_events:
            page.paragraph(f"... and {len(events) - max_events} more in events.jsonl", "meta")
    else:
        page.paragraph("none")
    detectors = config.get("detectors") if isinstance(config, dict) else None
    if detectors:
        page.heading("Detector settings")
        page.table(["detector", "settings"],
                   [[kind, ", ".join(f"{k}={v}" for k, v in settings.items())]
                    for kind, settings in detectors.items()])
    if isinstance(config, dict) and config.get("policy"):
        page.heading("Policy")
        page.table(["event kind", "actions"], [[k, ", ".join(v)] for k, v in config["policy"].items()])
    return page, summary


def run(args) -> int:
    from stablelab.config import ensure_out_folder
    from stablelab.io import atomic_write_json
    from stablelab.store.run_store import CONFIG, EVENTS, METRICS, PARQUET, load_events, load_metrics, read_json

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a folder")
    if not any((run_dir / name).exists() for name in (METRICS, PARQUET, EVENTS)):
        raise UsageError(f"{run_dir} holds no metrics.jsonl, metrics.parquet or events.jsonl: not a run folder")
    from stablelab.monitor.log_folder import load_rows, sessions

    def read(name: str, reader):
        """reader() on a file of the run; a corrupt file is one line naming it (exit 2)."""
        try:
            return reader()
        except (ValueError, UnicodeDecodeError, OSError) as error:  # JSON, Arrow and OS errors
            raise UsageError(f"{run_dir / name} cannot be read ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''}); not a file stablelab "
                             "wrote whole: move it away, or point at another run folder") from None

    started = read("sessions.jsonl", lambda: sessions(run_dir))  # a monitor folder: rows as they stand
    rows = read(METRICS, lambda: load_rows(run_dir) if started else load_metrics(run_dir))
    restarts = [int(s["first_step"]) for s in started if s.get("continued")]
    events = read(EVENTS, lambda: load_events(run_dir))
    if not rows and not events:
        raise UsageError(f"{run_dir} holds no readable row or event yet (a run killed before its first "
                         "read-back, or files that are not JSON lines)")
    config = read(CONFIG, lambda: read_json(run_dir / CONFIG) if (run_dir / CONFIG).exists() else {})
    out = ensure_out_folder(args.out) if args.out else run_dir
    incidents = read("incidents.json", lambda: read_json(run_dir / "incidents.json")
                     if (run_dir / "incidents.json").exists() else None)
    result = read("result.json", lambda: read_json(run_dir / "result.json") if (run_dir / "result.json").exists() else None)
    page, summary = render(run_dir, rows, events, config, args.max_events, incidents, restarts, result)
    page.write(out / "report.html")
    atomic_write_json(out / "summary.json", {"run_dir": str(run_dir), **summary})
    print(f"wrote {out / 'report.html'} and {out / 'summary.json'}")
    return 0
