"""The fault table of docs/reliability.md, measured: each fault injected into a small proxy sweep (or
a monitored training loop), then what was kept and what was redone, and the wall time against the
same sweep run clean in the same process.

    .venv/bin/python benchmarks/fault_table.py [--out /tmp/faults] [--steps 150]

Faults: the driver killed (SIGKILL) mid-sweep, one Dask worker killed (SIGKILL) mid-sweep, the
process killed between a run's result and its done mark, a full disk (a 384 KiB tmpfs: needs root,
else skipped), the monitored training process killed (SIGKILL)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

GRID = ["--widths", "32", "--variants", "baseline", "--batch-size", "4", "--seq-len", "16",
        "--prediction-step", "10", "--no-progress", "--lrs", "1e-3,3e-3,1e-2,3e-2,1e-1,3e-1"]


def proxy(out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "stablelab", "proxy", *GRID, "--steps", str(steps), "--out", str(out), *extra]


def runs(out: Path) -> dict[str, dict[str, str]]:
    found = {}
    for run in sorted((out / "runs").glob("*")):
        found[run.name] = {n: (run / n).read_text() for n in ("attempt", "result.json", "done") if (run / n).exists()}
    return found


def compare(before: dict, after: dict) -> tuple[int, int]:
    """(finished runs kept byte for byte, runs (re)done by the second pass)."""
    kept = sum(1 for r, f in before.items() if "done" in f and after.get(r) == f)
    return kept, len(after) - kept


def wait_for(predicate, proc, limit=300.0):
    deadline = time.time() + limit
    while not predicate():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("the sweep ended (or hung) before the fault could be injected")
        time.sleep(0.05)


def clean(root: Path, steps: int) -> float:
    start = time.time()
    subprocess.run(proxy(root / "clean", steps, "--workers", "2"), check=True, capture_output=True)
    return time.time() - start


def driver_kill(root: Path, steps: int) -> dict:
    out = root / "driver"
    start = time.time()
    proc = subprocess.Popen(proxy(out, steps, "--workers", "2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: len(list(out.glob("runs/*/done"))) >= 2, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    os.killpg(proc.pid, signal.SIGKILL)  # its orphaned workers
    before = runs(out)
    subprocess.run(proxy(out, steps, "--workers", "2"), check=True, capture_output=True)
    kept, redone = compare(before, runs(out))
    return {"kept": kept, "redone": redone, "wall_s": time.time() - start}


def worker_kill(root: Path, steps: int) -> dict:
    import psutil

    out = root / "worker"
    start = time.time()
    proc = subprocess.Popen(proxy(out, steps, "--workers", "2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)

    def workers():
        return [c for c in psutil.Process(proc.pid).children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]

    wait_for(lambda: any((r / "metrics.jsonl").exists() and not (r / "done").exists() for r in out.glob("runs/*"))
             and len(workers()) >= 2, proc)
    victim = workers()[0].pid
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate()
    done = runs(out)
    pids = [json.loads(f["result.json"])["pid"] for f in done.values() if "result.json" in f]
    return {"status": proc.returncode, "runs_done": sum("done" in f for f in done.values()),
            "credited_to_the_dead_worker": pids.count(victim), "wall_s": time.time() - start}


_CRASH = """
import os, sys
from distributed import LocalCluster
import stablelab.store.run_store as store
real, seen = store.atomic_write_bytes, []
def crash(path, data):
    if path.name == "done":
        seen.append(path)
        if len(seen) == int(sys.argv[1]):
            os._exit(9)
    real(path, data)
store.atomic_write_bytes = crash
with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
    from stablelab.cli import main
    sys.exit(main(["proxy", *sys.argv[2:], "--address", cluster.scheduler_address]))
"""


def crash_before_done(root: Path, steps: int) -> dict:
    out = root / "crash"
    start = time.time()
    args = [*GRID, "--steps", str(steps), "--out", str(out)]
    subprocess.run([sys.executable, "-c", _CRASH, "4", *args], capture_output=True)
    before = runs(out)
    half = [r for r, f in before.items() if "result.json" in f and "done" not in f]
    subprocess.run(proxy(out, steps, "--workers", "2"), check=True, capture_output=True)
    after = runs(out)
    kept, redone = compare(before, after)
    return {"half_finished": len(half), "kept": kept, "redone": redone,
            "half_finished_redone": all(after[r]["attempt"] != before[r]["attempt"] for r in half),
            "wall_s": time.time() - start}


def full_disk(root: Path, steps: int) -> dict:
    disk = root / "disk"
    disk.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=384k", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        return {"skipped": "cannot mount a tmpfs (needs root)"}
    try:
        out = disk / "out"
        full = subprocess.run(proxy(out, steps, "--workers", "1"), capture_output=True, text=True)
        before = runs(out)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        subprocess.run(proxy(out, steps, "--workers", "1"), check=True, capture_output=True)
        kept, redone = compare(before, runs(out))
        return {"status": full.returncode, "message": full.stderr.strip().splitlines()[-1][:160],
                "stderr_lines": len(full.stderr.strip().splitlines()), "kept": kept, "redone": redone}
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


_TRAIN = """
import sys, torch, torch.nn.functional as F
from stablelab.monitor import Monitor
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
monitor = Monitor(model, optimizer, log_dir=sys.argv[1], sinks=(), sync_every=10)
x, y = torch.randn(512, 16), torch.randint(0, 4, (512,))
for step in range(10 ** 6):
    i = torch.randint(0, 512, (32,))
    F.cross_entropy(model(x[i]), y[i]).backward()
    monitor.observe(None)
    optimizer.step()
    optimizer.zero_grad()
    print(step, flush=True)
"""


def monitor_kill(root: Path) -> dict:
    log_dir = root / "monitor"
    proc = subprocess.Popen([sys.executable, "-c", _TRAIN, str(log_dir)], stdout=subprocess.PIPE, text=True)
    last = 0
    for line in proc.stdout:
        last = int(line)
        if last >= 1234:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows = [json.loads(x) for x in (log_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    page = subprocess.run([sys.executable, "-m", "stablelab", "report", str(log_dir)], capture_output=True)
    return {"last_step_trained": last, "rows_kept": len(rows), "lost_steps": last + 1 - len(rows),
            "report_status": page.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/stablelab-faults")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    table = {"clean sweep (6 runs, 2 workers)": {"wall_s": clean(root, args.steps)},
             "driver SIGKILL mid-sweep, then rerun": driver_kill(root, args.steps),
             "one worker SIGKILL mid-sweep": worker_kill(root, args.steps),
             "crash between result.json and done, then rerun": crash_before_done(root, args.steps),
             "full disk (384 KiB tmpfs), then remount 64 MiB and rerun": full_disk(root, args.steps),
             "monitored training SIGKILL at step 1234": monitor_kill(root)}
    for name, figures in table.items():
        shown = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        print(f"{name}: {shown}")


if __name__ == "__main__":
    main()
