"""Detection quality of stablelab's monitor against the production trainers' spike rules: the full
`stablelab detect-bench` suite (recall on planted faults, false warnings per 1,000 healthy steps,
lead time on a runaway LR, damage under each rule's production behaviour), held out: thresholds and
the anchors' knobs tuned on the calibration split's seed(s), figures from the held-out seeds.

    .venv/bin/python benchmarks/detection_quality.py [--out out/detect-bench] [--quick] [--seeds 3]

Finished scenarios are kept in OUT/runs and not rerun; delete OUT to measure afresh."""

from __future__ import annotations

import argparse
from pathlib import Path

from stablelab.bench.detect import detection_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/detect-bench")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=None, help="held-out seeds (default 3; quick 2)")
    parser.add_argument("--calibration-seeds", type=int, default=1)
    args = parser.parse_args()
    summary = detection_benchmark(args.out, quick=args.quick, device=args.device, seeds=args.seeds,
                                  calibration_seeds=args.calibration_seeds)
    print((Path(args.out) / "summary.md").read_text())
    print(f"suite wall time {summary['wall_s']:.0f} s; report: {Path(args.out) / 'report.html'}")


if __name__ == "__main__":
    main()
