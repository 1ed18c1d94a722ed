"""`stablelab detect-bench`: how good are the monitor's verdicts? Recall on planted faults, false
warnings on healthy steps, lead time before the loss blows up, and damage, for stablelab's detectors
and the production trainers' rules side by side, held out from what set their thresholds.

    stablelab detect-bench --out out/detect [--quick] [--seeds 3] [--calibration-seeds 1]

Two splits (bench/scenarios: `suite(quick, split)`): the calibration split (seeds 0, 1, ...; each
fault planted 30 steps earlier and at 0.8x its size), where thresholds are tuned (the anchors' knobs,
the monitor's calibration curves), and the held-out split (seeds 100, 101, ...), which the table
reports. Runs (one task per scenario and seed, through Dask like every sweep; finished ones are kept
in DIR/runs/SPLIT-seedN/, NaN and inf included, and not rerun):
- every scenario under stablelab's default policy (its detectors live, as a user gets them);
- every fault scenario once more with a warn-only monitor (the unguarded run), once as its healthy
  twin (nothing planted, same seed), once clipped at 1.0 (the log-only rules' trainers clip) with
  its twin clipped too, and once per acting anchor live as its trainer runs it (OLMo-core: clip 1.0
  and a step factor of 0; ZClip: its own clip).

Definitions (docs/monitor.md; bench/verdicts.py computes them):
- a warning: a warning or critical event (stablelab), a flagged step (anchor); warnings less than
  50 steps apart are one incident, for every rule alike;
- recall: faults with a warning within [fault_step, fault_step + window] where the healthy twin has
  none in that window (chance-corrected), a stop before the fault being a miss;
- false warnings per 1k: incidents on healthy runs and before each fault, per 1,000 such steps;
- lead time, per scenario: from the first warning to the step where the unguarded run's loss (median
  of 5) first passes 2x its twin's, or becomes non-finite;
- damage ratio: probe loss 30 steps after the fault over the twin's at the same step, in the run the
  rule's trainer would have had (none when it stopped)."""

from __future__ import annotations

import argparse
import functools
import math
import time
import types
from pathlib import Path
from typing import Any, Sequence

from stablelab.bench.scoring import (  # noqa: F401 - the scoring's names stay importable from here
    INCIDENT_GAP, POINT_FAULTS, STABLELAB, anchor_decisions, anchor_flags, calibrate, damage_point, damage_ratio,
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
    """An anchor rule live, as its trainer runs it in production: the rule reads the pre-clip global
    gradient norm and the loss; then the trainer's own clipping (`production_clip`, torch's
    clip_grad_norm_: a NaN norm makes every gradient NaN); then the rule's action: a clipping rule
    clips, a skip rule skips a finite step (OLMo-core's step factor 0 lets a non-finite one reach the
    weights), a stop ends the run. rule=None: only the trainer's clipping (the clipped baseline the
    log-only rules are read on). Records each step's (loss, grad_norm) for the offline replay."""

    def __init__(self, name: str | None, clip: float | None = None):
        from stablelab.bench.anchors import ANCHORS, build_anchor

        self.rule = build_anchor(name) if name is not None else None
        self.clip = ANCHORS[name].production_clip if name is not None else clip
        self.rows: list[dict[str, Any]] = []
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
        self.rows.append({"step": step, "loss": float(loss), "grad_norm": norm})
        decision = self.rule.update(step, float(loss), norm) if self.rule is not None else None
        if decision is not None and decision.stop:
            raise _AnchorStop(decision.reason)
        if self.clip is not None:  # the trainer's clipping, on every step
            torch.nn.utils.clip_grad_norm_(self.params, self.clip, error_if_nonfinite=False)
        if decision is None:
            return
        if decision.flagged and self.rule.action == "skip" and math.isfinite(norm):
            self._skip = True  # a step factor of 0 on a finite step changes nothing
        if decision.clip_to is not None and math.isfinite(norm) and norm > decision.clip_to:
            factor = decision.clip_to / (norm + 1e-6)
            for g in grads:
                g.mul_(factor)

    def close(self):
        pass


class _AnchorStop(Exception):
    stops_training = True  # the scenario loop ends the run cleanly


def _trace_dict(trace) -> dict[str, Any]:
    return {"losses": trace.losses, "probe_losses": {str(k): v for k, v in trace.probe_losses.items()},
            "diverged": trace.diverged, "stopped_at": trace.stopped_at, "wall_s": trace.wall_s}


def _events(events) -> list[dict[str, Any]]:
    return [{"step": e.step, "kind": e.kind, "severity": e.severity} for e in events]


def run_one(name: str, detector_sets: Sequence[str], device: str = "cpu", seed: int = 0,
            split: str = "heldout") -> dict[str, Any]:
    """Every run one scenario needs at one seed, as plain data (non-finite values kept: the caller
    stores it with io.atomic_write_json_exact)."""
    from stablelab.bench.anchors import ANCHORS
    from stablelab.bench.scenarios import SCENARIOS, calibration_variant, run_scenario, twin_of

    scenario = SCENARIOS[name]
    if split == "calibration":
        scenario = calibration_variant(scenario)
    out: dict[str, Any] = {"name": name, "seed": seed, "split": split}
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
        twin = MonitorHook()  # the healthy twin, under the default policy: every rule's chance hits
        trace = run_scenario(twin_of(scenario), twin, seed=seed, device=device,
                             probe_steps=(scenario.fault_step - 1, scenario.fault_step + 30))
        out["twin"] = {**_trace_dict(trace), "events": _events(twin.monitor.events), "rows": twin.rows.rows_list}
        if any(ANCHORS[a].action is None and ANCHORS[a].production_clip for a in detector_sets if a in ANCHORS):
            clipped = AnchorHook(None, clip=1.0)  # the log-only rules' trainers clip at 1.0
            trace = run_scenario(scenario, clipped, seed=seed, device=device)
            out["clip_1"] = {**_trace_dict(trace), "rows": clipped.rows}
        if any(ANCHORS[a].production_clip for a in detector_sets if a in ANCHORS):
            clipped_twin = AnchorHook(None, clip=1.0)  # the twin of a trainer that clips at 1.0
            trace = run_scenario(twin_of(scenario), clipped_twin, seed=seed, device=device,
                                 probe_steps=(scenario.fault_step - 1, scenario.fault_step + 30))
            out["twin_clip_1"] = {**_trace_dict(trace), "rows": clipped_twin.rows}
        for anchor in detector_sets:
            if anchor in ANCHORS and ANCHORS[anchor].action in ("skip", "clip"):
                live = AnchorHook(anchor)
                trace = run_scenario(scenario, live, seed=seed, device=device)
                out[f"live:{anchor}"] = {**_trace_dict(trace), "rows": live.rows}
    return out


# -- the study: dispatch, resume, report ----------------------------------------------------------
CALIBRATION_SEED0 = 0   # the detector defaults were first set at seed 0: it belongs to calibration
HELDOUT_SEED0 = 100     # held-out seeds are 100, 101, ...: never used to set a threshold


def split_seeds(heldout: int, calibration: int) -> dict[str, list[int]]:
    """The disjoint seed lists of the two splits."""
    for what, n, least in (("seeds", heldout, 1), ("calibration seeds", calibration, 0)):
        if isinstance(n, bool) or not isinstance(n, int) or n < least:
            raise UsageError(f"{what} must be an integer >= {least}, got {n!r}")
    return {"calibration": [CALIBRATION_SEED0 + i for i in range(calibration)],
            "heldout": [HELDOUT_SEED0 + i for i in range(heldout)]}


def detection_benchmark(out: str | Path, *, quick: bool = False, detectors: str | Sequence[str] | None = None,
                        device: str = "cpu", workers: int | None = None, address: str | None = None,
                        progress: bool = True, seeds: int | None = None,
                        calibration_seeds: int = 1) -> dict[str, Any]:
    """Run (or resume) the benchmark into `out`: `seeds` held-out seeds (default 3, quick 2) and
    `calibration_seeds` seeds of the calibration split (its faults planted earlier and smaller).
    The anchors' knobs are tuned on the calibration split; every figure reported is held out.
    Returns the summary (also DIR/summary.json, DIR/summary.md and DIR/report.html)."""
    from stablelab.bench.scenarios import suite
    from stablelab.bench.verdicts import score_split, tune_anchors
    from stablelab.io import atomic_write_json, atomic_write_json_exact, read_json_exact

    names = parse_detectors(detectors)
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise UsageError(f"workers must be an integer >= 0, got {workers!r}")
    seed_lists = split_seeds(seeds if seeds is not None else (2 if quick else 3), calibration_seeds)
    out = Path(out)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    scenarios = {split: suite(quick, split) for split in seed_lists}
    fingerprint = ",".join(names)
    runs: dict[str, dict[tuple[int, str], dict[str, Any]]] = {split: {} for split in seed_lists}
    todo = []
    for split, split_seeds_ in seed_lists.items():
        for seed in split_seeds_:
            for scenario in scenarios[split]:
                path = runs_dir / f"{split}-seed{seed}" / f"{scenario.name}.json"
                if path.exists():
                    stored = read_json_exact(path)
                    if stored.get("detector_sets") == fingerprint:
                        runs[split][(seed, scenario.name)] = stored
                        continue
                todo.append((split, seed, scenario.name))

    def store(key: tuple[str, int, str], result: dict[str, Any]) -> None:
        split, seed, name = key
        result["detector_sets"] = fingerprint
        path = runs_dir / f"{split}-seed{seed}" / f"{name}.json"
        atomic_write_json_exact(path, result)  # NaN and inf survive: the anchors must see them
        runs[split][(seed, name)] = read_json_exact(path)  # as a resumed run reads it

    total = sum(len(scenarios[split]) * len(seeds_) for split, seeds_ in seed_lists.items())
    started = time.time()
    with _progress(progress, total, total - len(todo)) as advance:
        if todo and workers == 0:
            for key in todo:
                store(key, run_one(key[2], names, device, seed=key[1], split=key[0]))
                advance("/".join(map(str, key)))
        elif todo:
            from stablelab.sweep.executor import SweepStopped, dask_client, run_tasks

            failures = []
            by_label = {"/".join(map(str, key)): key for key in todo}

            def on_result(label, result, error):
                if error is not None:
                    failures.append(f"{label}: {error!r}")
                else:
                    store(by_label[label], result)
                advance(label)

            # the long healthy runs first, so the last tasks are short
            order = sorted(todo, key=lambda key: key[2] in {s.name for s in scenarios[key[0]] if s.kind == "fault"})
            with dask_client(address, workers) as client:
                try:
                    run_tasks(run_one, [("/".join(map(str, k)), (k[2], names, device, k[1], k[0])) for k in order],
                              client, on_result=on_result, stop_after_same_error=3 if len(order) > 3 else 0)
                except SweepStopped as stopped:
                    raise UsageError(str(stopped)) from None
            if failures:
                raise RuntimeError("scenarios failed (rerun to retry them): " + "; ".join(failures))
    calibration = None
    tuned_settings: dict[str, dict[str, Any]] = {}
    if seed_lists["calibration"]:
        cal_seeds = seed_lists["calibration"]
        tuned_settings = tune_anchors(scenarios["calibration"], runs["calibration"], cal_seeds, names)
        calibration = score_split(scenarios["calibration"], runs["calibration"], cal_seeds, names)
        calibration["tuned"] = score_split(scenarios["calibration"], runs["calibration"], cal_seeds,
                                           list(tuned_settings), tuned_settings)["detectors"]
    heldout = score_split(scenarios["heldout"], runs["heldout"], seed_lists["heldout"], names)
    summary: dict[str, Any] = {"seeds": seed_lists, "quick": quick, **heldout}
    if tuned_settings:
        summary["tuned"] = score_split(scenarios["heldout"], runs["heldout"], seed_lists["heldout"],
                                       list(tuned_settings), tuned_settings)["detectors"]
    summary["calibration"] = calibration
    summary["idealised"] = _idealised(names)
    summary["wall_s"] = time.time() - started
    atomic_write_json(out / "summary.json", summary)
    curves = None
    if seed_lists["calibration"]:
        curves = calibrate(scenarios["calibration"], runs["calibration"], seed_lists["calibration"])
        atomic_write_json(out / "calibration.json", curves)
    from stablelab.report.detect_report import write_report

    write_report(out, summary, scenarios["heldout"], runs["heldout"], curves)
    return summary


def _idealised(names: Sequence[str]) -> dict[str, str]:
    """Where the benchmark simplifies each rule as it runs in production (docs/monitor.md)."""
    from stablelab.bench.anchors import ANCHORS

    common = ("false warnings on the healthy runs are read on stablelab's unclipped default-policy runs; a "
              "tuned setting is replayed on the default setting's run")
    return {n: "; ".join(x for x in (ANCHORS[n].idealised, common) if x) for n in names if n in ANCHORS}


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
    parser.add_argument("--seeds", type=int, default=None,
                        help="held-out seeds, reported (default 3; --quick: 2, at least 2)")
    parser.add_argument("--calibration-seeds", type=int, default=1,
                        help="seeds of the calibration split, where thresholds are tuned (default 1)")
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
    if args.quick and args.seeds is not None and args.seeds < 2:
        raise UsageError(f"--quick keeps at least 2 held-out seeds, got --seeds {args.seeds}")
    from stablelab.config import ensure_out_folder

    ensure_out_folder(args.out, create=False)
    summary = detection_benchmark(args.out, quick=args.quick, detectors=args.detectors, device=args.device,
                                  workers=args.workers, address=args.address, progress=not args.no_progress,
                                  seeds=args.seeds, calibration_seeds=args.calibration_seeds)
    print((Path(args.out) / "summary.md").read_text())
    print(f"Report: {Path(args.out) / 'report.html'}")
    return 0 if summary else 1
