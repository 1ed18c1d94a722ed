"""The detectors' thresholds for sparse logs (issue 22, point 2), measured on the detection
benchmark's calibration split: its runs written as logs every k steps (k in --intervals), at up to
ten logging phases each (a fault lands anywhere between two logged steps), with and without
stablelab's own columns. Per interval, a coordinate search from the live defaults: for each
detector in `monitor.calibration.GRIDS`, the setting with the highest mean recall among those with
the fewest false warnings over the healthy runs and phases (none, wherever the other detectors
allow it; ties: the value nearest the live default, which moves only on evidence), two passes.

    .venv/bin/python benchmarks/diagnose_calibrate.py BENCH_OUT [--intervals 5,10,25,50,100] [--workers 2]

BENCH_OUT is a `stablelab detect-bench --out` folder. Prints LOG_THRESHOLDS for
src/stablelab/diagnosis/calibration.py and writes BENCH_OUT/diagnose_calibration.json. The held-out
seeds are not read."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diagnose_quality import BASIC, OWN, replay_split, STEP  # noqa: E402


def phases(interval: int, count: int = 10) -> list[int]:
    return list(range(0, interval, max(1, interval // count)))[:count]


def measure(split, interval: int, detectors: dict) -> tuple[float, float]:
    """(mean recall, false-warning incidents summed) over the phases and both column sets."""
    recalls, false = [], 0.0
    for columns in (BASIC, BASIC + STEP + OWN):
        for phase in phases(interval):
            figures = replay_split(split, interval, columns, phase=phase, detectors=detectors)
            recalls.append(figures["recall"])
            false += figures["false_warning_incidents"]
    return statistics.mean(recalls), false


def calibrate(split, interval: int, passes: int = 2) -> tuple[dict, list]:
    from stablelab.monitor.calibration import GRIDS
    from stablelab.monitor.detectors import DETECTORS

    live_defaults = {kind: getattr(DETECTORS[kind](), setting) for kind, (setting, _) in GRIDS.items()}
    chosen = {kind: {setting: live_defaults[kind]} for kind, (setting, _) in GRIDS.items()}
    trace = []
    for _ in range(passes):
        for kind, (setting, grid) in GRIDS.items():
            points = []
            for value in grid:
                recall, false = measure(split, interval, {**chosen, kind: {setting: value}})
                points.append((value, recall, false))
                trace.append({"interval": interval, "kind": kind, setting: value, "recall": recall, "false": false})
                print(f"interval {interval} {kind} {setting}={value}: recall {recall:.3f}, false {false:g}",
                      file=sys.stderr, flush=True)
            fewest = min(p[2] for p in points)  # zero where the other detectors allow it
            live = grid.index(min(grid, key=lambda v: abs(math.log(v / live_defaults[kind]))))
            best = max((p for p in points if p[2] == fewest),
                       key=lambda p: (p[1], -abs(grid.index(p[0]) - live)))
            chosen[kind] = {setting: best[0]}
    return chosen, trace


def calibrate_at(args: tuple) -> tuple[dict, list]:
    from diagnose_quality import load_split

    bench, interval = args
    return calibrate(load_split(bench, "calibration"), interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("--intervals", default="5,10,25,50,100")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from stablelab.io import atomic_write_json

    intervals = [int(i) for i in args.intervals.split(",")]
    table, traces = {}, []
    with ProcessPoolExecutor(args.workers) as pool:
        for interval, (chosen, trace) in zip(intervals, pool.map(calibrate_at, [(args.bench, i) for i in intervals])):
            table[interval] = chosen
            traces += trace
    atomic_write_json(args.bench / "diagnose_calibration.json", {"table": table, "trace": traces})
    print("LOG_THRESHOLDS: dict[int, dict[str, dict[str, Any]]] = {")
    for interval, kinds in table.items():
        print(f"    {interval}: {json.dumps(kinds)},")
    print("}")


if __name__ == "__main__":
    main()
