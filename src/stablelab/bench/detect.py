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
import json
import math
import statistics
import time
import types
from pathlib import Path
from typing import Any, Sequence

from stablelab.errors import UsageError

STABLELAB = "stablelab"
DETECTOR_SETS = (STABLELAB, "olmo_core", "megatron", "llm_foundry", "lightning", "zclip")
INCIDENT_GAP = 50
# the row columns kept per step: what the anchors and a replay of stablelab's detectors read
REPLAY_COLUMNS = ("step", "lr", "loss", "grad_norm", "grad_norm_typical", "grad_norm_ratio_min",
                  "spike_ratio_max", "nonfinite",
                  "outlier", "update_ratio_max", "attn_logit_max", "log_z_mean", "log_z_max",
                  "softmax_collapse_fraction", "softmax_collapse_lost_fraction", "eps_ratio_min")
POINT_FAULTS = ("grad_spike", "nan_batch", "inf_batch", "random_labels", "shuffled_tokens", "lr_jump")


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

    def attach(self, model, optimizer):
        from stablelab.monitor import Monitor

        self.monitor = Monitor(model, optimizer, policy=self.policy, sinks=[self.rows], **self.kwargs)

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

    def attach(self, model, optimizer):
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


# -- analysis: pure functions over the stored runs ----------------------------------------------
def incidents_of(steps: Sequence[int], gap: int = INCIDENT_GAP) -> list[tuple[int, int]]:
    """Flagged steps -> (start, end) incidents: steps less than `gap` apart are one incident."""
    spans: list[list[int]] = []
    for step in sorted(steps):
        if spans and step - spans[-1][1] <= gap:
            spans[-1][1] = step
        else:
            spans.append([step, step])
    return [tuple(s) for s in spans]


def anchor_flags(name: str, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Steps an anchor rule flags on a stream of rows (loss, grad_norm)."""
    from stablelab.bench.anchors import build_anchor

    rule = build_anchor(name)
    return [r["step"] for r in rows if rule.update(r["step"], r.get("loss"), r.get("grad_norm")).flagged]


def stablelab_flags(events: Sequence[dict[str, Any]]) -> list[int]:
    return sorted({e["step"] for e in events if e["severity"] in ("warning", "critical")})


def damage_point(losses: Sequence[float], fault_step: int, *, factor: float = 2.0) -> int | None:
    """First step at or after the fault where the median of 5 losses passes `factor` x the median
    of the 20 losses before the fault, or the loss is non-finite (stored as null); None if never."""
    losses = [math.nan if x is None else x for x in losses]
    before = [x for x in losses[max(0, fault_step - 20):fault_step] if math.isfinite(x)]
    if not before:
        return None
    level = statistics.median(before)
    for t in range(fault_step, len(losses)):
        if not math.isfinite(losses[t]):
            return t
        window = [x for x in losses[max(fault_step, t - 4):t + 1] if math.isfinite(x)]
        if len(window) >= min(5, t - fault_step + 1) and statistics.median(window) > factor * level:
            return t
    return None


def damage_ratio(probe_losses: dict[str, float], fault_step: int, stopped_at: int | None = None) -> float | None:
    """Probe loss 30 steps after the fault over the probe loss just before it (inf if non-finite,
    stored as null)."""
    key = str(fault_step + 30)
    before, after = probe_losses.get(str(fault_step - 1)), probe_losses.get(key)
    if stopped_at is not None and stopped_at <= fault_step + 30:
        return None
    if key in probe_losses and after is None:
        after = math.inf
    if before is None or after is None or not math.isfinite(before) or before <= 0:
        return None
    return after / before if math.isfinite(after) else math.inf


def evaluate(scenarios: Sequence[Any], runs: dict[str, dict[str, Any]], detector_sets: Sequence[str]) -> dict[str, Any]:
    """summary.json's content from the scenarios and their stored runs."""
    from stablelab.bench.anchors import ANCHORS

    rows_out, healthy_steps = [], 0
    per: dict[str, dict[str, list]] = {d: {"recall": [], "false": [], "lead": [], "damage": [], "damage_1000x": []}
                                       for d in detector_sets}
    for scenario in scenarios:
        run = runs[scenario.name]
        fault = scenario.kind == "fault"
        base = run["warn_only"] if fault else run["default"]
        row: dict[str, Any] = {"name": scenario.name, "kind": scenario.kind, "family": scenario.family,
                               "fault": scenario.fault, "fault_step": scenario.fault_step,
                               "window": scenario.window, "steps": scenario.steps, "by_detector": {}}
        if not fault:
            healthy_steps += len(run["default"]["losses"])
        hit = damage_point(base["losses"], scenario.fault_step) if fault else None
        row["damage_step_unguarded"] = hit
        for name in detector_sets:
            if name == STABLELAB:
                flags = stablelab_flags(run["default"]["events"])
                live = run["default"]
            else:
                flags = anchor_flags(name, base["rows"] if fault else run["default"]["rows"])
                live = run.get(f"live:{name}", run.get("warn_only"))
            result: dict[str, Any] = {}
            if fault:
                lo, hi = scenario.fault_step, scenario.fault_step + scenario.window
                inside = [s for s in flags if lo <= s <= hi]
                after = [s for s in flags if s >= lo]
                result["flagged"] = bool(inside)
                result["first_warning_step"] = after[0] if after else None
                result["warnings_before_fault"] = len(incidents_of([s for s in flags if s < lo]))
                lead = hit - after[0] if (hit is not None and after) else None
                result["lead_steps"] = lead
                stopped = ANCHORS[name].action == "stop" if name in ANCHORS else False
                if stopped and inside:
                    result["damage_ratio"] = None   # training stopped at the first flag
                else:
                    result["damage_ratio"] = damage_ratio(live["probe_losses"], scenario.fault_step,
                                                          live.get("stopped_at"))
                per[name]["recall"].append(result["flagged"])
                if lead is not None and scenario.fault == "lr_runaway":
                    per[name]["lead"].append(lead)
                if scenario.fault in POINT_FAULTS and result["damage_ratio"] is not None:
                    per[name]["damage"].append(result["damage_ratio"])
                if scenario.fault == "grad_spike" and scenario.settings.get("factor") == 1000 \
                        and result["damage_ratio"] is not None:
                    per[name]["damage_1000x"].append(result["damage_ratio"])
            else:
                result["false_warnings"] = len(incidents_of(flags))
                result["first_warning_step"] = flags[0] if flags else None
                per[name]["false"].append(result["false_warnings"])
            row["by_detector"][name] = result
        main = row["by_detector"].get(STABLELAB) or next(iter(row["by_detector"].values()))
        row["flagged"] = main.get("flagged", bool(main.get("false_warnings")))
        row["first_warning_step"] = main.get("first_warning_step")
        rows_out.append(row)
    detectors = {}
    for name in detector_sets:
        p = per[name]
        detectors[name] = {
            "recall": (sum(p["recall"]) / len(p["recall"])) if p["recall"] else None,
            "false_warnings_per_1k": (1000.0 * sum(p["false"]) / healthy_steps) if healthy_steps else None,
            "median_lead_steps": statistics.median(p["lead"]) if p["lead"] else None,
            "damage_ratio_default_policy": max(p["damage_1000x"]) if p["damage_1000x"] else None,
            "median_damage_ratio_point_faults": statistics.median(p["damage"]) if p["damage"] else None,
            "action": "default policy" if name == STABLELAB else (ANCHORS[name].action or "log only"),
        }
    return {"suites": {"healthy_steps": healthy_steps,
                       "faults": sum(1 for s in scenarios if s.kind == "fault"),
                       "healthy_runs": sum(1 for s in scenarios if s.kind == "healthy")},
            "detectors": detectors, "scenarios": rows_out}


def calibrate(scenarios: Sequence[Any], runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The detectors' threshold curves (stablelab.monitor.calibration) on this suite's runs."""
    from stablelab.monitor.calibration import calibration_curves

    healthy = [runs[s.name]["default"]["rows"] for s in scenarios if s.kind == "healthy"]
    faults = [(s.fault_step, s.window, runs[s.name]["warn_only"]["rows"]) for s in scenarios if s.kind == "fault"]
    return calibration_curves(healthy, faults)


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
