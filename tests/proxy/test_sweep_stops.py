"""A sweep whose first runs all fail with the same error stops with that one message (a setup
error, not one per run); runs that fail differently, or after a success, do not stop it."""

import pytest

from stablelab.sweep.executor import SweepStopped, dask_client, run_tasks


def _always(i):
    raise ValueError("CUDA out of memory (the same for every run)")


def _every_other(i):
    if i % 2:
        raise ValueError(f"run {i} failed its own way")
    return {"i": i}


def test_the_same_error_on_the_first_runs_stops_the_sweep():
    seen = []
    with dask_client(None, 1) as client:
        with pytest.raises(SweepStopped, match="first 3 runs all failed with ValueError: CUDA out of memory"):
            run_tasks(_always, [(f"r{i}", (i,)) for i in range(20)], client, retries=0,
                      on_result=lambda key, result, error: seen.append(key), stop_after_same_error=3)
        assert len(seen) == 3  # not 20 copies of one message
        results = run_tasks(_every_other, [(f"s{i}", (i,)) for i in range(8)], client, retries=0,
                            stop_after_same_error=3)
        assert sorted(results) == [f"s{i}" for i in range(8)]
        assert [results[f"s{i}"] for i in range(0, 8, 2)] == [{"i": i} for i in range(0, 8, 2)]


_STOPPED_SWEEP = """
import sys
from stablelab.sweep.executor import SweepStopped, dask_client, run_tasks

def fail(i):
    raise ValueError("CUDA out of memory (the same for every run)")

if __name__ == "__main__":
    try:
        with dask_client(None, 2) as client:
            run_tasks(fail, [(f"r{i}", (i,)) for i in range(12)], client, retries=0, stop_after_same_error=3)
    except SweepStopped as stopped:
        print(stopped, file=sys.stderr)
        sys.exit(2)
"""


def test_worker_processes_shut_down_cleanly_when_a_sweep_stops(tmp_path):
    """Issue 21, point 3: a sweep stopped by its first errors, with worker processes, ends with its
    one message and nothing else on stderr (no leaked-semaphore or resource_tracker warnings, no
    worker error logs)."""
    import subprocess
    import sys

    script = tmp_path / "stopped_sweep.py"
    script.write_text(_STOPPED_SWEEP)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("the first 3 runs all failed with ValueError")
