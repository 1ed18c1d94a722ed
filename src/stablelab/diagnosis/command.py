"""The `stablelab diagnose` command."""

from __future__ import annotations

import argparse
from pathlib import Path

from stablelab.logs import FORMATS

PROGRESS_FROM = 200_000  # logged steps from which a run's diagnosis shows a progress bar (~2 s)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a training log (file) or a folder of them")
    parser.add_argument("--out", default=None, help="folder for report.html and summary.json "
                        "(default: PATH/diagnosis for a folder, beside the file for a file)")
    parser.add_argument("--format", choices=FORMATS, default=None, help="the log's format (default: from its content)")
    parser.add_argument("--map", action="append", default=[], metavar="COLUMN=SIGNAL",
                        help="read COLUMN as SIGNAL (loss, grad_norm, lr, step, ...); repeatable")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from stablelab.diagnosis import diagnose_run
    from stablelab.config import ensure_out_folder
    from stablelab.io import atomic_write_json
    from stablelab.logs import find_runs, parse_mapping, read_log
    from stablelab.run.progress import progress_bar

    path = Path(args.path)
    mapping = parse_mapping(args.map)
    sources = find_runs(path, args.format)
    out = args.out or (path / "diagnosis" if path.is_dir() else path.parent / "diagnosis")
    ensure_out_folder(out, create=False)
    logs = [read_log(source, mapping) for source in sources]  # every log read (and refused) before any output
    out = ensure_out_folder(out)
    results = []
    for source, run_log in zip(sources, logs):
        rows = len(run_log.series["loss"][0])
        with progress_bar("diagnose", rows, unit="logged steps", description=source.name,
                          enabled=not args.no_progress and rows >= PROGRESS_FROM, transient=True) as bar:
            diagnosis = diagnose_run(run_log, progress=lambda done: bar.update(advance=done - bar.completed))
        folder = out if len(sources) == 1 else out / _slug(source, path)
        diagnosis.to_html(folder)
        results.append((folder, diagnosis))
        print(f"{source.path}: {diagnosis.verdict}")
    if len(results) > 1:
        atomic_write_json(out / "summary.json", {"runs": [{"folder": str(f), **d.summary()} for f, d in results]})
        comparison_page(results, out)
        worst = max(results, key=lambda r: len(r[1].incidents))
        print(f"{len(results)} runs; most incidents: {worst[1].run.source.path} ({len(worst[1].incidents)})")
    print(f"report: {out / 'report.html'}")
    return 0


def _slug(source, root: Path) -> str:
    try:
        relative = source.path.relative_to(root)
    except ValueError:
        relative = Path(source.path.name)
    return "_".join(relative.parts).replace(".", "_") or source.path.name


def comparison_page(results, out: Path) -> None:
    """OUT/report.html for several runs: one line each (incidents, the first, the interval), linked
    to its own page."""
    from stablelab.report.html import Page

    page = Page(f"stablelab diagnosis: {len(results)} runs", subtitle=str(out))
    page.heading("Runs, most incidents first")
    ranked = sorted(results, key=lambda r: -len(r[1].incidents))
    page.table(["run", "format", "logged steps", "interval", "incidents", "kinds", "first incident", "page"],
               [[d.run.source.name, d.run.source.format, d.steps_logged(), d.log_interval, len(d.incidents),
                 ", ".join(sorted({i["kind"] for i in d.incidents})) or "-",
                 f"step {d.incidents[0]['start']}" if d.incidents else "-",
                 str(Path(folder).relative_to(out) / "report.html")] for folder, d in ranked])
    page.heading("Verdicts")
    page.findings([f"{d.run.source.name}: {d.verdict}" for _, d in ranked], [bool(d.incidents) for _, d in ranked])
    page.write(out / "report.html")
