"""`stablelab diagnose` on a 1,000,000-step CSV log: wall time and peak memory (issue 22's bar:
under 20 s on 2 cores, under 1 GiB).

    .venv/bin/python benchmarks/diagnose_large.py [--rows 1000000]

Writes a Lightning-style metrics.csv (step, train_loss, grad_norm, lr-AdamW) with three planted
spikes, then runs `stablelab diagnose` on it in a fresh process and reads that process's peak RSS."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_log(path: Path, rows: int) -> list[int]:
    rng = np.random.default_rng(0)
    steps = np.arange(rows)
    loss = 2.0 * np.exp(-steps / (rows / 10)) + 0.3 + 0.03 * rng.random(rows)
    grad = 1.0 + 0.2 * rng.random(rows)
    spikes = [rows // 4, rows // 2, 3 * rows // 4]
    loss[spikes] *= 20
    grad[spikes] *= 500
    import pyarrow as pa
    import pyarrow.csv as pcsv

    table = pa.table({"step": steps, "train_loss": loss, "grad_norm": grad, "lr-AdamW": np.full(rows, 1e-3)})
    pcsv.write_csv(table, path)
    return spikes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "metrics.csv"
        spikes = write_log(log, args.rows)
        size = log.stat().st_size / 2 ** 20
        start = time.time()
        done = subprocess.run([sys.executable, "-m", "stablelab", "diagnose", str(log), "--out", str(Path(tmp) / "out")],
                              capture_output=True, text=True)
        wall = time.time() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 10  # KiB -> MiB (Linux)
        if done.returncode:
            raise SystemExit(done.stderr[-2000:])
        verdict = done.stdout.splitlines()[0]
        starts = {i["start"] for i in json.loads((Path(tmp) / "out" / "summary.json").read_text())["incidents"]}
        found = set(spikes) <= starts
        print(f"{args.rows} rows ({size:.0f} MiB CSV): diagnosed in {wall:.1f} s, peak RSS {peak:.0f} MiB; "
              f"the 3 planted spikes found: {found}")
        print(verdict[:300])


if __name__ == "__main__":
    main()
