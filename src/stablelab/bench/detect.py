"""`stablelab detect-bench`: how good are the monitor's verdicts? Recall on planted faults, false
warnings on healthy runs, lead time before the loss blows up, and damage under the default policy,
for stablelab's detectors and the production trainers' rules side by side on the same runs.

    stablelab detect-bench --out out/detect [--quick] [--detectors stablelab,olmo_core,zclip]

Runs (one task per scenario, through Dask like every sweep; finished scenarios are kept in
DIR/runs/ and not rerun):
- every scenario once under stablelab's default policy (its detectors live, as a user gets them);
- every fault scenario once more with a warn-only monitor: "what the fault does"; the anchors'
  rules are evaluated on this run's per-step loss and gradient norm (the same run for all of them),
  and it gives the damage of the log-only anchors;
- every fault scenario once per anchor that acts (OLMo-core skips, ZClip clips), with the rule live,
  for their damage.
Healthy scenarios are evaluated for every rule on the default-policy run's rows.

Definitions (docs/monitor.md):
- a warning: a warning or critical event (stablelab), a flagged step (anchor);
- flagged: a warning within [fault_step, fault_step + window];
- false warnings per 1k: warning incidents on healthy runs (consecutive warnings less than 50 steps
  apart are one incident, for every rule alike) per 1,000 healthy steps;
- lead time: steps from the first warning at or after the fault to the step where the training
  loss (median of 5) first passes 2x its median over the 20 steps before the fault, or becomes
  non-finite; positive = warned before the damage; null if the loss never got there;
- damage ratio: probe loss 30 steps after the fault over the probe loss just before it."""

from __future__ import annotations

import argparse
import functools
import math
import time
import types
from pathlib import Path
from typing import Any, Sequence

from stablelab.bench.scoring import (  # noqa: F401 - the scoring's names stay importable from here
    INCIDENT_GAP, POINT_FAULTS, STABLELAB, anchor_flags, calibrate, damage_point, damage_ratio, evaluate,
    incidents_of, stablelab_flags,
)
from stablelab.errors import UsageError

DETECTOR_SETS = (STABLELAB, "olmo_core", "megatron", "llm_foundry", "lightning", "zclip")
# the row columns kept per step: what the anchors and a replay of stablelab's detectors read
REPLAY_COLUMNS = ("step", "lr", "loss", "grad_norm", "grad_norm_typical", "grad_norm_ratio_min",
                  "spike_ratio_max", "nonfinite",
                  "outlier", "update_ratio_max", "attn_logit_max", "log_z_mean", "log_z_max",
                  "softmax_collapse_fraction", "softmax_collapse_lost_fraction", "eps_ratio_min")


def parse_detectors(text: str | Sequence[str] | None) -> list[str]:
    """Detector-set names from a comma-separated string or a list; UsageError on an unknown one."""
    if text is None:
        return list(DETECTOR_SETS)
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in DETECTOR_SETS]
    if unknown or not names:
        raise UsageError(f"unknown detector set(s) {unknown or names}; available: {', '.join(DETECTOR_SETS)}")
    return names


# -- one scenario: the runs ----------------------------------------------------------------------
class _RowSink:
    """A monitor sink keeping the REPLAY_COLUMNS of every row (built on first use: the Sink base
    class lives in the monitor, imported lazily with torch)."""

    @staticmethod
    def create():
        from stablelab.monitor import Sink

        class RowSink(Sink):
            def __init__(self):
                self.rows_list = []

            def rows(self, rows):
                self.rows_list.extend({k: r[k] for k in REPLAY_COLUMNS if k in r} for r in rows)

        return RowSink()


class MonitorHook:
    """Runs a stablelab Monitor inside a scenario's loop."""

    def __init__(self, policy=None, **monitor_kwargs):
        self.policy, self.kwargs = policy, monitor_kwargs
        self.rows = _RowSink.create()
        self.monitor = None

    def attach(self, model, optimizer, task="auto"):
        from stablelab.monitor import Monitor

        self.monitor = Monitor(model, optimizer, policy=self.policy, sinks=[self.rows],
                               **{"task": task, **self.kwargs})

    def observe(self, step, loss):
        self.monitor.observe(loss)

    def close(self):
        if self.monitor is not None:
            self.monitor.close()


class AnchorHook:
    """An anchor rule live: skip (wrapping optimizer.step) or clip (scaling gradients) as the rule
    decides, from the step's loss and global gradient norm."""

    def __init__(self, name: str):
        from stablelab.bench.anchors import build_anchor

        self.rule = build_anchor(name)
        self._skip = False

    def attach(self, model, optimizer, task="auto"):
        import torch

        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        original = optimizer.step
        hook = self

        def step(_optimizer, *args, **kwargs):
            if hook._skip:
                hook._skip = False
                return None
            return original(*args, **kwargs)

        # a bound method carrying the original's attributes, as the Monitor does, so torch's LR
        # schedulers still see their own step counter
        functools.update_wrapper(step, getattr(original, "__func__", original))
        optimizer.step = types.MethodType(step, optimizer)
        self._torch = torch

    def observe(self, step, loss):
        torch = self._torch
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))
        decision = self.rule.update(step, float(loss), norm)
        if decision.flagged and self.rule.action == "skip":
            self._skip = True
        if decision.clip_to is not None and math.isfinite(norm) and norm > decision.clip_to:
            factor = decision.clip_to / (norm + 1e-6)
            for g in grads:
                g.mul_(factor)

    def close(self):
        pass


def _trace_dict(trace) -> dict[str, Any]:
    return {"losses": trace.losses, "probe_losses": {str(k): v for k, v in trace.probe_losses.items()},
            "diverged": trace.diverged, "stopped_at": trace.stopped_at, "wall_s": trace.wall_s}


def _events(events) -> list[dict[str, Any]]:
    return [{"step": e.step, "kind": e.kind, "severity": e.severity} for e in events]


def run_one(name: str, detector_sets: Sequence[str], device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Every run one scenario needs, as plain data (JSON-serialisable)."""
    from stablelab.bench.anchors import ANCHORS
    from stablelab.bench.scenarios import SCENARIOS, run_scenario

    scenario = SCENARIOS[name]
    out: dict[str, Any] = {"name": name}
    default = MonitorHook()
    trace = run_scenario(scenario, default, seed=seed, device=device)
    out["default"] = {**_trace_dict(trace), "events": _events(default.monitor.events),
                      "incidents": [i.to_dict() for i in default.monitor.incidents],
                      "rows": default.rows.rows_list}
    if scenario.kind == "fault":
        watch = MonitorHook(policy={"*": "warn"})
        trace = run_scenario(scenario, watch, seed=seed, device=device)
        out["warn_only"] = {**_trace_dict(trace), "events": _events(watch.monitor.events),
                            "rows": watch.rows.rows_list}
        for anchor in detector_sets:
            if anchor in ANCHORS and ANCHORS[anchor].action in ("skip", "clip"):
                trace = run_scenario(scenario, AnchorHook(anchor), seed=seed, device=device)
                out[f"live:{anchor}"] = _trace_dict(trace)
    return out


# -- the study: dispatch, resume, report ----------------------------------------------------------
def detection_benchmark(out: str | Path, *, quick: bool = False, detectors: str | Sequence[str] | None = None,
                        device: str = "cpu", workers: int | None = None, address: str | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the benchmark into `out`; returns the summary (also DIR/summary.json,
    DIR/summary.md and DIR/report.html)."""
    from stablelab.bench.scenarios import suite
    from stablelab.io import atomic_write_json, read_json

    names = parse_detectors(detectors)
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise UsageError(f"workers must be an integer >= 0, got {workers!r}")
    out = Path(out)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    scenarios = suite(quick)
    fingerprint = ",".join(names)
    runs: dict[str, dict[str, Any]] = {}
    todo = []
    for scenario in scenarios:
        path = runs_dir / f"{scenario.name}.json"
        if path.exists():
            stored = read_json(path)
            if stored.get("detector_sets") == fingerprint:
                runs[scenario.name] = stored
                continue
        todo.append(scenario)

    def store(name: str, result: dict[str, Any]) -> None:
        result["detector_sets"] = fingerprint
        atomic_write_json(runs_dir / f"{name}.json", result)
        runs[name] = read_json(runs_dir / f"{name}.json")  # as a resumed run reads it (non-finite -> null)

    started = time.time()
    with _progress(progress, len(scenarios), len(scenarios) - len(todo)) as advance:
        if todo and workers == 0:
            for scenario in todo:
                store(scenario.name, run_one(scenario.name, names, device))
                advance(scenario.name)
        elif todo:
            from stablelab.sweep.executor import dask_client, run_tasks

            failures = []

            def on_result(key, result, error):
                if error is not None:
                    failures.append(f"{key}: {error!r}")
                else:
                    store(key, result)
                advance(key)

            with dask_client(address, workers) as client:
                run_tasks(run_one, [(s.name, (s.name, names, device)) for s in todo], client, on_result=on_result)
            if failures:
                raise RuntimeError("scenarios failed (rerun to retry them): " + "; ".join(failures))
    summary = evaluate(scenarios, runs, names)
    summary["quick"] = quick
    summary["wall_s"] = time.time() - started
    atomic_write_json(out / "summary.json", summary)
    calibration = calibrate(scenarios, runs)
    atomic_write_json(out / "calibration.json", calibration)
    from stablelab.report.detect_report import write_report

    write_report(out, summary, scenarios, runs, calibration)
    return summary


class _progress:
    """A rich progress bar over scenarios (or nothing)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled, self.total, self.done = enabled, total, done

    def __enter__(self):
        if not self.enabled:
            return lambda name: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("detect-bench"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.description}"))
        self.bar.start()
        self.task = self.bar.add_task("", total=self.total, completed=self.done)
        return lambda name: self.bar.update(self.task, advance=1, description=name)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()


# -- CLI ------------------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (summary.json, summary.md, report.html, runs/)")
    parser.add_argument("--quick", action="store_true", help="the quick suite (about 3 minutes on 2 cores)")
    parser.add_argument("--detectors", default=",".join(DETECTOR_SETS),
                        help=f"comma-separated detector sets (default: all of {', '.join(DETECTOR_SETS)})")
    parser.add_argument("--device", default="cpu", help="torch device for the runs (default cpu)")
    parser.add_argument("--workers", type=int, default=None,
                        help="Dask worker processes (default: one per core; 0: run in this process)")
    parser.add_argument("--address", default=None, help="a running Dask scheduler's address")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    try:
        torch.empty(0, device=args.device)
    except (RuntimeError, ValueError, AssertionError) as error:  # AssertionError: a CPU-only build asked for cuda
        raise UsageError(f"device {args.device!r} is not available: {str(error).splitlines()[0]}") from None
    summary = detection_benchmark(args.out, quick=args.quick, detectors=args.detectors, device=args.device,
                                  workers=args.workers, address=args.address, progress=not args.no_progress)
    print((Path(args.out) / "summary.md").read_text())
    print(f"Report: {Path(args.out) / 'report.html'}")
    return 0 if summary else 1
