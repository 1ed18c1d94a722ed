"""Issue 21, point 4: faults survived, nothing lost. A Dask worker killed mid-sweep, a full disk
(injected ENOSPC, and a real full tmpfs where this machine may mount one), a crash between a run's
last metrics and its `done` mark. (The monitor's own files under SIGKILL: tests/monitor/test_kill.py.)
docs/reliability.md lists each with the command that injects it."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stablelab.cli import main

GRID = ["--widths", "32", "--variants", "baseline", "--batch-size", "4", "--seq-len", "16",
        "--prediction-step", "10", "--no-progress"]


def _runs(out: Path) -> dict[str, dict[str, str]]:
    """run id -> the files that say whether and how it finished (bytes as text)."""
    runs = {}
    for run in sorted((out / "runs").iterdir()):
        runs[run.name] = {name: (run / name).read_text() for name in ("attempt", "result.json", "done")
                          if (run / name).exists()}
    return runs


def _no_temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.tmp")]


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


# -- a crash between a run's last metrics and its done mark ------------------------------------
_CRASH_BEFORE_DONE = """
import os, sys
from distributed import LocalCluster
import stablelab.store.run_store as store
real, seen = store.atomic_write_bytes, []

def crash_before_the_last_done(path, data):
    if path.name == "done":
        seen.append(path.parent.name)
        if len(seen) == int(sys.argv[1]):
            os._exit(9)  # the whole process dies: result.json is written, done is not
    real(path, data)

store.atomic_write_bytes = crash_before_the_last_done
with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
    from stablelab.cli import main
    sys.exit(main(["proxy", *sys.argv[2:], "--address", cluster.scheduler_address]))
"""


def test_a_crash_between_metrics_and_done_redoes_exactly_that_run(tmp_path):
    out = tmp_path / "out"
    args = [*GRID, "--lrs", "1e-3,1e-2,1e-1", "--steps", "20", "--out", str(out)]
    crashed = subprocess.run([sys.executable, "-c", _CRASH_BEFORE_DONE, "3", *args], capture_output=True,
                             text=True, timeout=300)
    assert crashed.returncode == 9, crashed.stderr
    before = _runs(out)
    half = [run for run, files in before.items() if "done" not in files]
    assert len(half) == 1 and "result.json" in before[half[0]]  # its metrics and result, no done mark
    assert sum("done" in files for files in before.values()) == 2

    assert main(["proxy", *GRID, "--lrs", "1e-3,1e-2,1e-1", "--steps", "20", "--workers", "1",
                 "--out", str(out)]) == 0
    after = _runs(out)
    assert all("done" in files for files in after.values()) and len(after) == 3
    for run, files in before.items():
        if run in half:  # redone: a new attempt, its rows once each
            assert after[run]["attempt"] != files["attempt"]
            assert _steps(out / "runs" / run) == sorted(set(_steps(out / "runs" / run)))
        else:  # kept byte for byte, not run again
            assert after[run] == files
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(r["run_id"] for r in summary["runs"]) == sorted(after)
    assert _no_temporaries(out) == []


# -- a full disk --------------------------------------------------------------------------------
def test_a_full_disk_stops_the_sweep_naming_the_file_and_loses_no_finished_run(tmp_path, monkeypatch, capsys):
    """ENOSPC injected into the run store's metrics writes from the second run on (in-process
    workers, so the injection reaches them): one line naming the file, exit 2; the finished run is
    complete; after space is freed, the same command finishes the rest without redoing it."""
    from distributed import LocalCluster

    import stablelab.store.run_store as store

    real_log = store.RunWriter.log
    started: list[str] = []

    def full_disk_log(self, row):
        if self.run_dir.name not in started:
            started.append(self.run_dir.name)
        if len(started) >= 2:
            with store.naming_failed_writes(self._metrics.name):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_log(self, row)

    out = tmp_path / "out"
    args = ["proxy", *GRID, "--lrs", "1e-3,1e-2,1e-1", "--steps", "20", "--out", str(out)]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        monkeypatch.setattr(store.RunWriter, "log", full_disk_log)
        assert main([*args, "--address", cluster.scheduler_address]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]
    assert f"runs/{started[1]}/metrics.jsonl" in err[0] and "rerun" in err[0]
    finished = {run: files for run, files in _runs(out).items() if "done" in files}
    assert list(finished) == [started[0]]
    result = json.loads(finished[started[0]]["result.json"])  # complete, parseable
    assert result["run_id"] == started[0]
    assert _no_temporaries(out) == []

    monkeypatch.setattr(store.RunWriter, "log", real_log)  # space freed
    assert main([*args, "--workers", "1"]) == 0
    assert _runs(out)[started[0]] == finished[started[0]]
    assert len(json.loads((out / "summary.json").read_text())["runs"]) == 3


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_real_full_tmpfs(tmp_path):
    """The same on a real 384 KiB tmpfs, room for a few runs (needs root to mount; the injected test above covers
    the same path everywhere): one line naming a file under --out, exit 2, every run marked done
    complete; remounted larger, the same command finishes without redoing one."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "384k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "out"
        cmd = [sys.executable, "-m", "stablelab", "proxy", *GRID, "--lrs", "1e-3,3e-3,1e-2,3e-2,1e-1,3e-1",
               "--steps", "40", "--workers", "1", "--out", str(out)]
        full = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        lines = [line for line in full.stderr.splitlines() if line.strip() and "Warning" not in line
                 and "warnings.warn" not in line]
        assert full.returncode == 2 and len(lines) == 1, full.stderr[-2000:]
        assert "No space left on device" in lines[0] and str(out) in lines[0]
        finished = {run: files for run, files in _runs(out).items() if "done" in files}
        assert len(finished) >= 1  # the disk filled after some runs (in a later run, or in the report)
        for files in finished.values():
            json.loads(files["result.json"])
        assert _no_temporaries(out) == []
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-2000:]
        after = _runs(out)
        assert len(after) == 6 and all("done" in files for files in after.values())
        for run, files in finished.items():
            assert after[run] == files
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# -- a worker killed mid-sweep ------------------------------------------------------------------
def _worker_pids(driver: int) -> list[int]:
    import psutil

    try:
        children = psutil.Process(driver).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c.pid for c in children if "spawn_main" in " ".join(c.cmdline())]


@pytest.mark.slow
def test_a_worker_killed_mid_sweep_has_its_run_redone_and_every_run_done_once(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "stablelab", "proxy", *GRID, "--lrs", "1e-3,3e-3,1e-2,3e-2,1e-1,3e-1",
           "--steps", "150", "--workers", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    killed = None
    try:
        deadline = time.time() + 240
        # wait until a run is under way (a metrics file without a done mark), then kill a worker
        while killed is None:
            assert proc.poll() is None and time.time() < deadline, "the sweep ended before a worker was killed"
            running = [r for r in out.glob("runs/*") if (r / "metrics.jsonl").exists()
                       and (r / "metrics.jsonl").stat().st_size > 0 and not (r / "done").exists()]
            workers = _worker_pids(proc.pid)
            if running and len(workers) >= 2:
                killed = workers[0]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    runs = _runs(out)
    assert len(runs) == 6 and all("done" in files for files in runs.values())
    pids = [json.loads(files["result.json"])["pid"] for files in runs.values()]
    assert killed not in pids  # no run is credited to the dead worker: its run was redone elsewhere
    for run in runs:  # each run's rows once: the killed attempt's rows were not kept beside the redo
        steps = _steps(out / "runs" / run)
        assert steps == sorted(set(steps)) and steps[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(r["run_id"] for r in summary["runs"]) == sorted(runs)
