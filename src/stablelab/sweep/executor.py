"""Dispatch independent runs through Dask distributed.

Default: an embedded `LocalCluster` (one single-threaded worker process per core, no dashboard).
With `address="tcp://HOST:PORT"`, the same tasks go to a running Dask scheduler. A worker that dies
has its task rescheduled by Dask (up to `retries` times); one dead worker does not break the rest."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@contextmanager
def dask_client(address: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A `distributed.Client`: on `address` if given, else on a fresh LocalCluster."""
    import dask
    from distributed import Client, LocalCluster

    # Quiet, local-disk spill space and no dashboard: this is a batch tool, not a service.
    # A failed task is reported by run_tasks' caller, once: the workers' own error logs are silenced.
    with dask.config.set({"logging.distributed": "critical"}):
        if address:
            try:
                client = Client(address, timeout="10s")
            except OSError as error:
                from stablelab.errors import UsageError

                raise UsageError(f"cannot reach the Dask scheduler at {address}: {error}") from None
            try:
                yield client
            finally:
                client.close()
            return
        cluster = LocalCluster(
            n_workers=workers or default_workers(), threads_per_worker=1, processes=True,
            dashboard_address=":0", silence_logs=50,  # any free port: never "8787 already in use"
        )
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()


class SweepStopped(Exception):
    """The first runs of a sweep all failed with the same error: it is the setup, not the runs."""


def run_tasks(
    fn: Callable[..., dict], tasks: Iterable[tuple[str, tuple]], client: Any, retries: int = 3,
    on_result: Callable[[str, dict | None, BaseException | None], None] | None = None,
    stop_after_same_error: int = 0,
) -> dict[str, dict | None]:
    """Submit `fn(*args)` for each (key, args); call `on_result(key, result, error)` as each ends.

    Results come back in completion order. A task that raises is reported with its error and the
    sweep goes on (its run folder has no `done` marker, so the next resume retries it), unless the
    first `stop_after_same_error` tasks to end (N > 0) all failed with the same error and none
    succeeded: then the other tasks are cancelled and SweepStopped says it once. A run that found
    the disk full stops the sweep at once (the next ones would too), naming the file it could not
    write; finished runs are complete (every file is written to a temporary name, then renamed)."""
    from distributed import as_completed

    from stablelab.io import out_of_space

    futures = {}
    for key, args in tasks:
        future = client.submit(fn, *args, key=f"stablelab-{key}", retries=retries, pure=False)
        futures[future] = key
    results: dict[str, dict | None] = {}
    same: list[str] = []  # the keys that failed with the first error, while nothing succeeded
    first: tuple[str, str] | None = None
    for future in as_completed(futures):
        key = futures[future]
        try:
            result, error = future.result(), None
        except Exception as exc:  # noqa: BLE001 - reported per run, sweep continues
            result, error = None, exc
        results[key] = result
        if on_result is not None:
            on_result(key, result, error)
        if out_of_space(error):
            for other in futures:
                other.cancel()
            raise SweepStopped(f"{error.strerror} writing {error.filename} (stopped the sweep; finished runs are "
                               "kept and complete: free space and rerun the same command to resume)")
        if stop_after_same_error and same is not None:
            signature = None if error is None else (type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            if signature is None or (first is not None and signature != first):
                same = None  # a success or a second kind of error: the runs themselves differ
            else:
                first = signature
                same.append(key)
                if len(same) >= stop_after_same_error:
                    for other in futures:
                        other.cancel()
                    raise SweepStopped(f"the first {len(same)} runs all failed with {first[0]}: {first[1]} "
                                       "(stopped the sweep; finished runs are kept, rerun to resume once it is fixed)")
    return results
