"""The proxy study's runs through Dask distributed: pending runs dispatched, finished ones read back,
failures collected (the sweep stops on repeated identical errors). A run whose driver died stops at
its next log (local cluster)."""

from __future__ import annotations

import os
from pathlib import Path

from stablelab.errors import UsageError
from stablelab.run.grid import ProxyGrid
from stablelab.run.progress import progress_bar
from stablelab.run.proxy_run import ProxyRunConfig, train
from stablelab.store.run_store import is_done, load_result
from stablelab.sweep.executor import SweepStopped, dask_client, run_tasks

RUNS_DIR = "runs"


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


def execute_run(config: ProxyRunConfig, run_dir: str, driver_pid: int | None, model_fn=None) -> dict:
    """Runs in a Dask worker. With a local cluster, a run whose driver died stops at its next log."""
    if is_done(run_dir):  # finished by an earlier attempt of the same task
        return load_result(run_dir)
    return train(config, run_dir, keep_going=lambda: _driver_alive(driver_pid), model_fn=model_fn)


def run_sweep(grid: ProxyGrid, out: Path, workers: int | None, address: str | None,
              progress: bool = True, model_fn=None, label: str = "proxy study") -> list[dict]:
    runs_dir = out / RUNS_DIR
    configs = grid.runs()
    pending = [c for c in configs if not is_done(runs_dir / c.run_id)]
    results = {c.run_id: load_result(runs_dir / c.run_id) for c in configs if c not in pending}
    failures: list[str] = []
    if pending:
        diverged = sum(1 for r in results.values() if r.get("diverged"))
        with progress_bar(label, total=len(configs), completed=len(results), unit="runs",
                          fields={"diverged": diverged}, enabled=progress) as bar:

            def on_result(key: str, result: dict | None, error: BaseException | None) -> None:
                nonlocal diverged
                if result is not None:
                    results[key] = result
                    diverged += bool(result.get("diverged"))
                else:
                    failures.append(f"{key}: {type(error).__name__}: {error}")
                bar.update(advance=1, diverged=diverged)

            driver_pid = None if address else os.getpid()
            with dask_client(address, workers) as client:
                try:
                    run_tasks(execute_run,
                              [(c.run_id, (c, str(runs_dir / c.run_id), driver_pid, model_fn)) for c in pending],
                              client, on_result=on_result, stop_after_same_error=3 if len(pending) > 3 else 0)
                except SweepStopped as stopped:
                    raise UsageError(str(stopped)) from None
    if failures:
        raise RuntimeError("some runs failed (rerun to retry them):\n" + "\n".join(failures))
    return [results[c.run_id] for c in configs]
