"""A diagnosis as the same offline page as `stablelab report` (verdict and what was read first),
and its summary.json."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

MAX_POINTS = 4000  # points per curve on the page (a long log is thinned, every event's step kept)


def page_rows(diagnosis) -> list[dict[str, Any]]:
    steps, columns = diagnosis.detection.steps, diagnosis.detection.columns  # aligned once, by detect
    keep = np.unique(np.concatenate([np.linspace(0, len(steps) - 1, min(len(steps), MAX_POINTS)).astype(int),
                                     np.searchsorted(steps, [e.step for e in diagnosis.detection.events])]))
    keep = keep[keep < len(steps)]
    rows = []
    for i in keep:
        row = {"step": int(steps[i])}
        for name, (values, logged) in columns.items():
            if logged[i] and math.isfinite(values[i]):
                row[name] = float(values[i])
        rows.append(row)
    return rows


def write_page(diagnosis, out: Path) -> Path:
    from stablelab.config import ensure_out_folder
    from stablelab.io import atomic_write_json
    from stablelab.report.html import Page
    from stablelab.report.run_page import render

    out = ensure_out_folder(out)
    events = [e.to_dict() for e in diagnosis.detection.events]
    config = {"source": str(diagnosis.run.source.path), "format": diagnosis.run.source.format}
    page, _ = render(out, page_rows(diagnosis), events, config, 200, diagnosis.incidents, [], None)
    page.title = f"stablelab diagnosis: {diagnosis.run.source.name}"
    head = Page("")
    head.heading("Verdict")
    head.findings([diagnosis.verdict], [bool(diagnosis.incidents)])
    head.heading("What was read")
    found = [f"{signal} <- {column!r}" for signal, column in diagnosis.signals_found.items()]
    interval = diagnosis.log_interval
    head.findings([f"{diagnosis.run.source.format} log {diagnosis.run.source.path}: "
                   f"{diagnosis.steps_logged()} logged losses, every {interval or '?'} step(s)",
                   "signals: " + ", ".join(found)] + diagnosis.notes,
                  [False, False] + [True] * len(diagnosis.notes))
    head.findings([f"detectors off: {kind} ({why})" for kind, why in diagnosis.detection.detectors_off.items()])
    page.parts[:0] = head.parts
    path = page.write(out / "report.html")
    atomic_write_json(out / "summary.json", diagnosis.summary())
    return path
