"""The monitor's sinks as one: every call goes to each sink in turn, and a sink that fails is
reported once (its first error) and costs no other sink its rows, events or incidents, and the
guard nothing."""

from __future__ import annotations

import logging
import traceback
import warnings
from typing import Any, Callable, Sequence

from stablelab.monitor.sinks import Sink, make_sink

log = logging.getLogger("stablelab.monitor")


class SinkSet:
    def __init__(self, sinks: Sequence[Sink], count_error: Callable[[], None]):
        self.sinks = list(sinks)
        self._count_error = count_error
        self._reported: set[int] = set()

    def __iter__(self):
        return iter(self.sinks)

    def __len__(self) -> int:
        return len(self.sinks)

    def _call(self, method: str, *args: Any) -> None:
        for sink in self.sinks:
            try:
                getattr(sink, method)(*args)
            except Exception as error:  # noqa: BLE001 - a sink must not stop training
                self._count_error()
                if id(sink) not in self._reported:
                    self._reported.add(id(sink))
                    detail = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                    log.error("stablelab monitor: the %s sink failed (training and the other sinks "
                              "go on; reported once):\n%s", type(sink).__name__, detail)
                    warnings.warn(f"stablelab monitor: the {type(sink).__name__} sink failed, training "
                                  f"continues: {error!r}", RuntimeWarning, stacklevel=4)

    def rows(self, rows) -> None:
        if rows:
            self._call("rows", rows)

    def events(self, events) -> None:
        if events:
            self._call("events", events)

    def incidents(self, opened, closed) -> None:
        if opened or closed:
            self._call("incidents", opened, closed)

    def close(self, summary: dict[str, Any]) -> None:
        self._call("close", summary)


def build_sinks(sinks: Sequence[str | Sink], log_dir, config: dict[str, Any], rank: int, all_ranks: bool,
                count_error: Callable[[], None]):
    """(SinkSet, LogFolder or None). Rank 0 (or every rank with all_ranks: rank r in LOG_DIR-rank{r})
    writes; the log folder is checked before any other sink creates a file in it, and written to
    only once every sink has started."""
    from stablelab.monitor.log_folder import LogFolder

    if rank > 0 and not all_ranks:
        return SinkSet([], count_error), None
    if log_dir is not None and rank > 0:
        log_dir = f"{log_dir}-rank{rank}"
    folder = LogFolder(log_dir, config) if log_dir is not None else None
    built = [make_sink(sink, log_dir) if isinstance(sink, str) else sink for sink in sinks]
    if folder is not None:
        folder.open()
    return SinkSet(([folder] if folder else []) + built, count_error), folder
