"""`stablelab proxy`: the small-scale proxy study (Wortsman et al. 2023, arXiv 2309.14322).

Sweep LR x width (x depth) x variant x seed on the reference transformer, store every run, then
analyse (LR sensitivity, best / largest stable LR, attention-logit prediction) and report.
Rerunning the same command resumes: finished runs (with a `done` marker) are not redone."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

from stablelab.analysis.proxy_summary import findings, summarize
from stablelab.data.corpus import BUILTIN, load_corpus
from stablelab.errors import UsageError
from stablelab.models.size import count_parameters
from stablelab.models.variants import VARIANTS
from stablelab.report.proxy_report import write_proxy_report
from stablelab.run.proxy_run import ProxyRunConfig, train
from stablelab.store.columns import layer_column
from stablelab.store.files import atomic_write_json, read_json
from stablelab.store.query import query
from stablelab.store.run_store import is_done, load_result
from stablelab.sweep.executor import dask_client, default_workers, run_tasks
from stablelab.sweep.grid import ProxyGrid

DEFAULT_LRS = "3e-4,1e-3,3e-3,1e-2,3e-2,1e-1,3e-1"  # the paper's grid

# Named presets: each sets defaults that explicit flags override.
PRESETS: dict[str, dict] = {
    "default": {},
    # Output-logit divergence needs weight decay 0 and long training at high LR (paper 3.2). This is
    # the CPU-sized setting where it would show first; see docs/proxy.md for what it shows.
    "logit-divergence": {
        "widths": "32,64", "lrs": "1e-1,3e-1,1", "variants": "qk_norm,qk_norm+z_loss",
        "weight_decay": 0.0, "steps": 2000, "log_every": 20,
    },
    # A minute-long look at the tool: two widths, three LRs, two variants.
    "quick": {"widths": "32,64", "lrs": "1e-3,1e-2,1e-1", "variants": "baseline,qk_norm", "steps": 100},
}
DEFAULTS = {
    "widths": "64,128,256", "depth": "2", "lrs": DEFAULT_LRS,
    "variants": "baseline,qk_norm,z_loss,qk_norm+z_loss", "steps": 200, "seeds": 1,
    "optimizer": "adamw", "weight_decay": 1e-4, "batch_size": 8, "seq_len": 64,
    "prediction_step": 40, "predict_width": 1024, "log_every": 10,
}
SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"


def configure(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--out", required=True, help="output folder (reused to resume)")
    a("--preset", default="default", choices=sorted(PRESETS), help="named settings (flags override)")
    a("--widths", help=f"comma-separated model widths (default {DEFAULTS['widths']})")
    a("--depth", help="number of layers, or a comma-separated list to sweep depth (default 2)")
    a("--lrs", help=f"comma-separated peak learning rates (default: the paper's {DEFAULT_LRS})")
    a("--variants", help=f"comma-separated mitigations from: {', '.join(VARIANTS)}")
    a("--optimizer", help="comma-separated optimizer names (default adamw; see stablelab.optim.available())")
    a("--steps", type=int, help="training steps per run (default 200)")
    a("--seeds", type=int, help="number of seeds per grid point (default 1)")
    a("--batch-size", type=int, dest="batch_size", help="sequences per step (default 8)")
    a("--seq-len", type=int, dest="seq_len", help="bytes per sequence (default 64)")
    a("--weight-decay", type=float, dest="weight_decay", help="independent weight decay (default 1e-4)")
    a("--mup-simple", action="store_true", help="muParam-simple: scale hidden LRs by base_width / width")
    a("--log-every", type=int, dest="log_every", help="log metrics every N steps (default 10)")
    a("--prediction-step", type=int, dest="prediction_step",
      help="early step whose layer-0 attention logit feeds the prediction (default 40)")
    a("--predict-width", type=int, dest="predict_width", help="width to extrapolate to (default 1024)")
    a("--corpus", default=BUILTIN, help="text file or folder (default: the Python stdlib's source)")
    a("--workers", type=int, help="local worker processes (default: one per core)")
    a("--address", help="a running Dask scheduler, tcp://HOST:PORT (default: embedded LocalCluster)")
    a("--device", default="cpu", help="torch device for training (cpu, cuda, cuda:1, mps)")
    a("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")


def _csv(text: str, kind, flag: str) -> tuple:
    try:
        values = tuple(kind(v.strip()) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--{flag}: cannot read {text!r} as a comma-separated list of {kind.__name__}") from None
    if len(set(values)) != len(values):
        raise UsageError(f"--{flag} has duplicates: {text}")
    return values


def settings_from_args(args: argparse.Namespace) -> dict:
    settings = {**DEFAULTS, **PRESETS[args.preset]}
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    return settings


def grid_from_args(args: argparse.Namespace) -> tuple[ProxyGrid, dict]:
    s = settings_from_args(args)
    if s["seeds"] < 1:
        raise UsageError(f"--seeds must be at least 1, got {s['seeds']}")
    for key in ("batch_size", "seq_len", "log_every"):
        if s[key] < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be at least 1, got {s[key]}")
    if s["weight_decay"] < 0:
        raise UsageError(f"--weight-decay must not be negative, got {s['weight_decay']}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    corpus = args.corpus
    if corpus != BUILTIN:
        if not Path(corpus).expanduser().exists():
            raise UsageError(f"corpus not found: {corpus}")
        corpus = str(Path(corpus).expanduser().resolve())
    base = ProxyRunConfig(
        steps=s["steps"], batch_size=s["batch_size"], seq_len=s["seq_len"],
        weight_decay=s["weight_decay"], mup_simple=args.mup_simple, corpus=corpus,
        log_every=s["log_every"], device=args.device,
    )
    grid = ProxyGrid(
        widths=_csv(s["widths"], int, "widths"), depths=_csv(s["depth"], int, "depth"),
        lrs=_csv(s["lrs"], float, "lrs"), variants=_csv(s["variants"], str, "variants"),
        seeds=tuple(range(s["seeds"])), optimizers=_csv(s["optimizer"], str, "optimizer"), base=base,
    ).validate()
    return grid, s


def prepare_out(out: Path, grid: ProxyGrid) -> None:
    """Create OUT, or check that an existing OUT holds this same grid (then we resume)."""
    sweep_file = out / SWEEP_FILE
    if sweep_file.exists():
        previous = read_json(sweep_file)
        if previous != grid.fingerprint():
            changed = sorted(k for k in set(previous) | set(grid.fingerprint())
                             if previous.get(k) != grid.fingerprint().get(k))
            raise UsageError(f"{out} holds a different grid (differs in: {', '.join(changed)}); "
                             "use a new --out or the same settings to resume")
        return
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty and holds no stablelab proxy study; use a new --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(sweep_file, grid.fingerprint())


def _driver_alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def execute_run(config: ProxyRunConfig, run_dir: str, driver_pid: int | None) -> dict:
    """Runs in a Dask worker. With a local cluster, a run whose driver died stops at its next log."""
    if is_done(run_dir):  # finished by an earlier attempt of the same task
        return load_result(run_dir)
    return train(config, run_dir, keep_going=lambda: _driver_alive(driver_pid))


def run_sweep(grid: ProxyGrid, out: Path, workers: int | None, address: str | None,
              progress: bool = True) -> list[dict]:
    runs_dir = out / RUNS_DIR
    configs = grid.runs()
    pending = [c for c in configs if not is_done(runs_dir / c.run_id)]
    results = {c.run_id: load_result(runs_dir / c.run_id) for c in configs if c not in pending}
    failures: list[str] = []
    if pending:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        diverged = sum(1 for r in results.values() if r.get("diverged"))
        columns = [TextColumn("[bold]proxy study"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("runs, {task.fields[diverged]} diverged"), TimeElapsedColumn(),
                   TextColumn("left"), TimeRemainingColumn()]
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task("sweep", total=len(configs), completed=len(results), diverged=diverged)

            def on_result(key: str, result: dict | None, error: BaseException | None) -> None:
                nonlocal diverged
                if result is not None:
                    results[key] = result
                    diverged += bool(result.get("diverged"))
                else:
                    failures.append(f"{key}: {type(error).__name__}: {error}")
                bar.update(task, advance=1, diverged=diverged)

            driver_pid = None if address else os.getpid()
            with dask_client(address, workers) as client:
                run_tasks(execute_run,
                          [(c.run_id, (c, str(runs_dir / c.run_id), driver_pid)) for c in pending],
                          client, on_result=on_result)
    if failures:
        raise RuntimeError("some runs failed (rerun to retry them):\n" + "\n".join(failures))
    return [results[c.run_id] for c in configs]


def early_attention_logits(runs_dir: Path, step: int) -> dict[str, float]:
    """run_id -> layer-0 max attention logit at the logged step nearest to `step` (DuckDB query)."""
    column = layer_column("attn_logit_max_l", 0)
    table = query(runs_dir, f"SELECT run, arg_min({column}, abs(step - {int(step)})) AS z FROM metrics "
                            f"WHERE {column} IS NOT NULL GROUP BY run").to_pylist()
    return {row["run"]: row["z"] for row in table}


def analyse_and_report(out: Path, grid: ProxyGrid, results: list[dict], settings: dict,
                       sweep_seconds: float | None = None) -> dict:
    width = settings["predict_width"]
    sizes = {w: count_parameters(replace(grid.base, width=w, depth=grid.depths[0]).model_config())
             for w in (*grid.widths, width)}
    prediction = {"width": width, "n_params": sizes[width], "step": settings["prediction_step"],
                  "sizes": {str(w): n for w, n in sizes.items()}}
    summary = summarize(results, early_attention_logits(out / RUNS_DIR, settings["prediction_step"]),
                        list(grid.lrs), list(grid.depths), prediction)
    lines = findings(summary)
    corpus = load_corpus(grid.base.corpus).describe()
    meta = {
        "subtitle": f"{len(results)} runs, {grid.base.steps} steps each, corpus {corpus['source']} "
                    f"({corpus['train_bytes'] / 1e6:.1f} MB train, Python {corpus['python_version']})"
                    + (f", sweep {sweep_seconds:.0f} s" if sweep_seconds is not None else ""),
        "settings": {**settings, "corpus": corpus, "device": grid.base.device},
        "single_optimizer": len(grid.optimizers) == 1,
        "sweep_seconds": sweep_seconds,
    }
    return write_proxy_report(out, summary, lines, meta)


def run(args: argparse.Namespace) -> int:

    grid, settings = grid_from_args(args)
    if settings["predict_width"] <= 0:
        raise UsageError(f"--predict-width must be positive, got {settings['predict_width']}")
    out = Path(args.out)
    load_corpus(grid.base.corpus)  # fail fast on an unreadable or tiny corpus
    prepare_out(out, grid)
    started = time.time()
    n_runs = len(grid.runs())
    print(f"proxy study: {n_runs} runs ({len(grid.variants)} variants x {len(grid.widths)} widths x "
          f"{len(grid.depths)} depths x {len(grid.lrs)} LRs x {len(grid.seeds)} seeds"
          f"{' x ' + str(len(grid.optimizers)) + ' optimizers' if len(grid.optimizers) > 1 else ''}), "
          f"{args.workers or default_workers() if not args.address else 'cluster'} workers -> {out}")
    results = run_sweep(grid, out, args.workers, args.address, progress=not args.no_progress)
    sweep_s = time.time() - started
    paths = analyse_and_report(out, grid, results, settings, sweep_seconds=sweep_s)
    print(f"done in {sweep_s:.0f} s. Report: {paths['report']}")
    for line in paths["findings"]:
        print(f"  - {line}")
    return 0
