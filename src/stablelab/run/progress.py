"""One progress bar for every study: a label, a total, a count so far and any extra text fields.

    with progress_bar("grok", total=1200, unit="steps") as bar:
        bar.update(description="softmax_adamw")
        bar.advance(1)

    with progress_bar("proxy study", total=30, completed=4, unit="runs",
                      fields={"diverged": 1}) as bar:      # shown as "runs, 1 diverged"
        bar.update(advance=1, diverged=2)

`enabled=False` gives the same object with nothing drawn (rich's own `disable`)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


class Bar:
    """The handle a study advances: `advance(n)`, `update(description=..., advance=..., **fields)`."""

    def __init__(self, progress: Any, task_id: Any):
        self._progress, self._task_id = progress, task_id

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._task_id, n)

    def update(self, description: str | None = None, advance: float | None = None, **fields: Any) -> None:
        self._progress.update(self._task_id, description=description, advance=advance, **fields)

    @property
    def completed(self) -> float:
        return self._progress.tasks[0].completed if self._progress.tasks else 0


@contextmanager
def progress_bar(label: str, total: float | None, *, completed: float = 0, unit: str = "steps",
                 fields: dict[str, Any] | None = None, description: str = "", enabled: bool = True,
                 transient: bool = False, remaining: bool = True) -> Iterator[Bar]:
    """A rich progress bar: "[label] description ━━━ 3/10 unit, <fields> 0:00:01 left 0:00:02".

    Args:
        label: bold name in front (the study).
        total: the count at 100% (None: unknown, the bar pulses).
        completed: how much is already done (e.g. runs read back from the store).
        unit: word after the count.
        fields: extra text fields, shown as "<value> <name>" after the unit, e.g. {"diverged": 0};
            change them with `bar.update(name=value)`.
        description: initial text after the label (change with `bar.update(description=...)`).
        enabled: False draws nothing (logs, tests).
        transient: remove the bar when done.
        remaining: show the estimated time left."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    fields = dict(fields or {})
    suffix = "".join(f", {{task.fields[{name}]}} {name}" for name in fields)
    columns = [TextColumn(f"[bold]{label}[/] {{task.description}}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(unit + suffix), TimeElapsedColumn()]
    if remaining:
        columns += [TextColumn("left"), TimeRemainingColumn()]
    with Progress(*columns, disable=not enabled, transient=transient) as progress:
        task_id = progress.add_task(description, total=total, completed=completed, **fields)
        yield Bar(progress, task_id)
