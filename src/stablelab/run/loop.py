"""The training loop the studies share: one update at the named moments, logging, divergence, store.

    result = train_loop(steps, compute_loss, optimizer, monitor=monitor, log_every=10,
                        on_log=lambda step, loss: {"step": step, "loss": float(loss)},
                        writer=writer, advance=bar.advance)

Each step, in this order:

    lr_at(step) sets the learning rate          (optional schedule; honours a group's lr_scale)
    loss = compute_loss(step)                   forward (the study picks the batch); it may return
                                                (loss, monitored): the monitor and on_log then see
                                                `monitored` (say the cross-entropy without z-loss)
    optimizer.zero_grad(); loss.backward()
    monitor.observe(monitored)                  the one moment the monitor reads gradients
    before_update(step)                         gradient transforms (a global-norm clip)
    row = on_log(step, monitored)               on log steps: after backward, before the update, so the
                                                row describes the weights the step starts from and
                                                .grad holds this step's gradient
    non-finite loss (or row[k] for k in diverge_on): the run diverged; stop before the update
    optimizer.step()
    after_update(step)                          (optional) e.g. the update's size on log steps
    advance(1)

With `optimizer=None` the step function updates by itself (a continual learner's `observe`): the
loop only counts, logs and checks. A diverged run is a result (`LoopResult.diverged`), never an
exception; so is a stop decided by the monitor's guard (`LoopResult.stopped`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from stablelab.monitor.events import TrainingStopped
from stablelab.store.files import to_jsonable
from stablelab.store.run_store import RunWriter, is_done, load_config, load_metrics, load_result


@dataclass
class LoopResult:
    """What a loop did: the rows it logged, the updates it took, and how it ended."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    steps_done: int = 0                 # optimizer updates taken
    diverged: bool = False
    nonfinite_step: int | None = None   # the step whose loss (or diverge_on value) was not finite
    stopped: bool = False               # the monitor's guard stopped training
    seconds: float = 0.0


def _finite(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, torch.Tensor):
        value = float(value.detach())
    return math.isfinite(value)


def train_loop(steps: int, compute_loss: Callable[[int], torch.Tensor | float],
               optimizer: torch.optim.Optimizer | None = None, *, monitor: Any = None,
               log_every: int = 0, on_log: Callable[[int, Any], dict[str, Any] | None] | None = None,
               diverge_on: Iterable[str] = (), finite_every: int = 1, writer: RunWriter | None = None,
               advance: Callable[[int], None] | None = None,
               lr_at: Callable[[int], float] | None = None,
               before_update: Callable[[int], None] | None = None,
               after_update: Callable[[int], None] | None = None,
               log_last: bool = False) -> LoopResult:
    """Run `steps` training steps; see the module docstring for the order of the moments.

    Args:
        steps: number of steps (updates, unless the run diverges or is stopped).
        compute_loss: step -> loss tensor (forward only); with optimizer=None, a function that
            takes the whole step itself and returns its loss (tensor or float).
        optimizer: zeroed, backpropagated into and stepped by the loop; None: see compute_loss.
        monitor: a stablelab.monitor.Monitor (or anything with observe(loss)); the caller closes it.
        log_every: call on_log every this many steps (0: never).
        on_log: (step, loss) -> a row (dict) or None; rows are kept and written to `writer`.
        diverge_on: row keys whose non-finite value also means the run diverged.
        finite_every: check the loss every this many steps (one host sync each; 0: only on log
            steps). A non-finite loss ends the run before its update.
        writer: the run's store; rows are logged to it and ownership is checked on log steps.
        advance: called with 1 after every step (a progress bar).
        lr_at: step -> learning rate, set on every param group (times its `lr_scale`, if any).
        before_update: step -> None, after the monitor's read and before on_log and the update
            (the place for gradient transforms such as optim.transforms.clip_by_global_norm).
        after_update: step -> None, after the update.
        log_last: the last step is a log step too.

    Returns:
        LoopResult (rows, steps_done, diverged, nonfinite_step, stopped, seconds)."""
    result = LoopResult()
    started = time.perf_counter()
    diverge_on = tuple(diverge_on)
    for step in range(steps):
        if lr_at is not None and optimizer is not None:
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
        loss = compute_loss(step)
        loss, monitored = loss if isinstance(loss, tuple) else (loss, loss)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if monitor is not None:
            try:
                monitor.observe(monitored.detach() if isinstance(monitored, torch.Tensor) else monitored)
            except TrainingStopped:
                result.stopped = True
                break
        if before_update is not None:
            before_update(step)
        log_now = bool(log_every) and (step % log_every == 0 or (log_last and step == steps - 1))
        row = on_log(step, monitored) if log_now and on_log is not None else None
        if row is not None:
            result.rows.append(row)
            if writer is not None:
                writer.log(row)
                writer.check_owner()
        if log_now or (finite_every and step % finite_every == 0):
            bad_loss = not _finite(monitored) or (loss is not monitored and not _finite(loss))
            if bad_loss or (row is not None and not all(_finite(row.get(k)) for k in diverge_on)):
                result.diverged, result.nonfinite_step = True, step
                break
        if optimizer is not None:
            optimizer.step()
        if after_update is not None:
            after_update(step)
        result.steps_done += 1
        if advance is not None:
            advance(1)
    result.seconds = time.perf_counter() - started
    return result


# -- resume: a finished run with the same configuration is read back, not repeated ---------------
def read_finished(run_dir: str | Path, config: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(result, rows) of the finished run in run_dir if it was made with exactly `config`, else None."""
    if run_dir is None or not is_done(run_dir):
        return None
    if load_config(run_dir) != to_jsonable(config):
        return None
    return load_result(run_dir), load_metrics(run_dir)


def finished_result(run_dir: str | Path | None, config: dict[str, Any], advance: Callable[[int], Any] | None = None,
                    steps: int = 0) -> dict[str, Any] | None:
    """The result of the finished run in run_dir made with `config` (advancing a progress bar by
    its `steps`, as if it had trained), else None: the resume check of every study's run."""
    finished = read_finished(run_dir, config)
    if finished is not None and advance is not None:
        advance(steps)
    return None if finished is None else finished[0]


def open_run(run_dir: str | Path | None, config: dict[str, Any]) -> RunWriter | None:
    """A started RunWriter for run_dir (an unfinished attempt there is removed), or None without one."""
    return RunWriter(run_dir, config).start() if run_dir is not None else None
