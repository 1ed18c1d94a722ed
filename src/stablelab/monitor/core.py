"""The Monitor: one moment where it reads gradients (after backward, before the optimizer steps),
one place where the guard decides.

    monitor = Monitor(model, optimizer, log_dir=None, policy=None)
    for x, y in loader:
        loss = loss_fn(model(x), y)
        loss.backward()
        monitor.observe(loss)   # may decide to skip, clip, roll back, stop
        optimizer.step()        # honours the guard's decision
        optimizer.zero_grad()
    monitor.close()

The parts: `measure` (device-side signals, no host sync; `model_info` finds the logits module and
the task), `stepping` (the wrapped optimizer.step), `readback` (one host transfer per
`sync_every` steps into rows of the `schema` columns), `detectors` (rows -> events), `guard`
(events -> interventions, a registry), `incidents` (events -> incidents), `sinks` (where rows,
events and incidents go). The default policy's skip (non-finite steps, extreme gradient outliers)
is decided on the device: on an accelerator it reads nothing back per step (Policy.skip_mode)."""

from __future__ import annotations

import logging
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stablelab.errors import UsageError
from stablelab.monitor.description import describe, event_counts, summary
from stablelab.monitor.detection import Detection
from stablelab.monitor.detectors import Detector, build_detectors, monitor_detector_settings, trust_rule
from stablelab.monitor.distributed import Agreement
from stablelab.monitor.events import Event, TrainingStopped
from stablelab.monitor.guard import Guard, Policy, Snapshot, effective_lr
from stablelab.monitor.incidents import Incident, IncidentTracker
from stablelab.monitor.measure import NONFINITE, OUTLIER, Measurer, find_logits_module
from stablelab.monitor.scheduled import ScheduledChecks
from stablelab.monitor.settings import MonitorSettings
from stablelab.monitor.signal_registry import StepRecord
from stablelab.monitor.sink_set import build_sinks
from stablelab.monitor.state import load_monitor_state, monitor_state
from stablelab.monitor.stepping import StepWrapper, inner_optimizer

log = logging.getLogger("stablelab.monitor")

__all__ = ["Monitor", "find_logits_module"]


class Monitor:
    """Stability signals, detectors, incidents and a guard for any PyTorch training loop.

    model, optimizer: what to watch (the optimizer's `step` is wrapped so it honours the guard).
    log_dir: the monitor's own folder (monitor.log_folder: a new or empty one, or one an earlier
        session of this run wrote, which is continued; a folder holding other files is refused),
        readable by `stablelab report LOG_DIR`. Under torch.distributed only rank 0 writes it.
    policy: a Policy, or a dict kind -> action(s); None = skip non-finite steps and extreme
        gradient outliers, warn otherwise.
    settings, **keywords: a `MonitorSettings` (monitor.settings: one documented field per setting)
        and/or its fields as keywords (`sync_every=5`, `task="regression"`, `sharpness_every=100`,
        `opposing_batch=(x, y)`, ...); keywords win over `settings`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 log_dir: str | Path | None = None, policy: Policy | dict | None = None,
                 settings: MonitorSettings | None = None, **keywords: Any):
        s = self.settings = MonitorSettings.from_keywords(settings, **keywords)
        self.on_stop, self.stop_requested = s.on_stop, None
        self.model, self.optimizer = model, inner_optimizer(optimizer)
        self.policy = policy if isinstance(policy, Policy) else Policy(policy) if policy else Policy()
        self.sync_every, self.update_ratio_every = s.sync_every, s.update_ratio_every
        self.detectors: list[Detector] = build_detectors(
            monitor_detector_settings(s.detectors, s.target_false_alarm_rate, s.grad_scaler))
        self.step, self.events, self.internal_errors, self.started = 0, [], 0, time.time()
        self._earlier_counts: dict[str, int] = {}  # events of the sessions before a load_state_dict
        self._deferred: list[Event] = []  # found by state_dict()'s flush, handled at the next decision
        self.skipped_steps: list[int] = []
        self._skipped: set[int] = set()

        self.measurer = Measurer(model, self.optimizer, on_error=self._internal_error, attention=s.attention,
                                 logits_module=s.logits_module, task=s.task, update_sample=s.update_sample,
                                 elementwise_spikes=s.elementwise_spikes, outlier_factor=s.outlier_factor,
                                 outlier_warmup=s.outlier_warmup, collapse_mass_floor=1e-4,
                                 loss_dtype_override=s.loss_dtype, signal_rows=s.signal_rows,
                                 # device mode promises no host read between syncs, on any device
                                 numbers_on="device" if self.policy.skip_mode == "device" else "auto",
                                 trust=trust_rule(self.detectors, s.outlier_patience))
        self.scheduled = ScheduledChecks(model, self.measurer, s.sharpness, s.opposing)
        self.sharpness_every, self.opposing_every = s.sharpness.every, s.opposing.every
        self.params, self.names = self.measurer.params, self.measurer.names
        self.attention_layers = self.measurer.attention_layers
        self.logits_module_name = self.measurer.logits_module_name
        self.agreement = Agreement([d.kind for d in self.detectors])
        snapshot_dir = self.policy.snapshot_dir  # one file per rank under torch.distributed
        if snapshot_dir and self.agreement.active:
            snapshot_dir = str(Path(snapshot_dir) / f"rank{self.agreement.rank}")
        self.snapshot = Snapshot(snapshot_dir) if self.policy.uses("rollback") else None
        self.guard = Guard(self.policy, model, self.optimizer, self.measurer, self.snapshot)
        self.tracker = IncidentTracker(gap=s.incident_gap, link=s.incident_gap)
        self._immediate = {d.kind for d in self.detectors
                           if d.every_step and self.policy.acts_before_step(d.kind)} - self.guard.device_skips
        self.detection = Detection(self.detectors, self.measurer, self._immediate, self.guard.device_skips,
                                   self._internal_error)
        self._pending: list[StepRecord] = []
        self._clean_since_snapshot, self._closed, self._sample_weights = True, False, False
        self._handles: list = []
        self._agreed_step: int | None = None  # the last step voted on under torch.distributed
        self._flushed_to: int | None = None  # the last step read back, its incidents not yet closed

        # Sinks first: a sink that cannot start (a missing package) leaves the model untouched.
        self.sinks, folder = build_sinks(s.sinks, log_dir, {**self.describe(), **(s.config or {})},
                                         self.agreement.rank, s.all_ranks, self._count_error)
        self.log_folder = folder

        start_step = s.start_step
        self._explicit_start = start_step is not None
        if start_step is None:
            start_step = folder.next_step if folder is not None and folder.next_step is not None else 0
            if self.agreement.active:  # every rank numbers steps as rank 0 does
                start_step = self.agreement.broadcast(start_step)
        self.step = start_step
        self.measurer.next_step(self.step % self.sync_every == 0)  # arms the hooks on a sampled step
        if s.update_ratio_every and self.measurer.matrices:
            self._handles.append(self.optimizer.register_step_post_hook(self.measurer.after_update))
        self._step = StepWrapper(self.optimizer, self._take_skip, lambda: self._closed)

    _inner = staticmethod(inner_optimizer)  # kept for integrations.lightning

    @property
    def incidents(self) -> list[Incident]:
        """Every incident so far (open ones included), in the order they opened."""
        return self.tracker.incidents

    def describe(self) -> dict[str, Any]:
        return describe(self)

    # -- the one moment the monitor reads gradients -------------------------------------------
    def observe(self, loss: torch.Tensor | float | None = None) -> None:
        """Call after backward, before optimizer.step(). Measures, detects, and lets the guard
        decide what the next optimizer.step() does."""
        if self._closed:
            raise RuntimeError("observe() after close()")
        try:
            self._observe(loss)
        except TrainingStopped:
            raise
        except Exception as error:  # noqa: BLE001 - a monitor must not stop training
            self._internal_error(error)
            if self.agreement.active and self._agreed_step != self.step and self._decides(self.step):
                try:  # the other ranks wait for this rank's vote
                    self._handle([], {})
                except Exception as error:  # noqa: BLE001
                    self._internal_error(error)
        finally:
            self.step += 1
            self.measurer.next_step(self.step % self.sync_every == 0)

    def _decides(self, t: int) -> bool:
        """Whether step t is a decision point (under torch.distributed: a vote on every rank)."""
        return bool(self._immediate) or t % self.sync_every == 0

    def _observe(self, loss) -> None:
        t = self.step
        if self.guard.skip_next:  # the step it was meant for was never taken (GradScaler skipped it)
            self.guard.skip_next = False
            self.skipped_steps.append(t - 1)
            self._skipped.add(t - 1)
        if self._sample_weights:  # after load_state_dict: today's weights are the next update's "before"
            self._sample_weights = False
            self.measurer.sample_weights_now()
        events = []
        if t % self.sync_every == 0:  # the read-back; then the trust level its rows set
            events = self._flush("collect")
            self.detection.share_spike_level()
        lr = max((effective_lr(g) for g in self.optimizer.param_groups), default=float("nan"))
        record = self.measurer.measure(t, loss, lr)
        self._pending.append(record)
        if self.guard.device_skips:
            self.measurer.drop_gradients(record)
        if self._immediate:
            events += self.detection.now(record, self._pending[-2] if len(self._pending) >= 2 else None)
        if events or self._deferred or (self.agreement.active and self._decides(t)):
            self._handle(events, {"grad_norm": record.host.get("grad_norm")})
            record.lr = max((effective_lr(g) for g in self.optimizer.param_groups), default=float("nan"))
        self._close_incidents()
        if t % self.sync_every == 0:
            self.measurer.measure_sampled(record)
            self.measurer.refresh_second_moments()
            if self.snapshot is not None:
                self._maybe_snapshot(record)
        self.scheduled.run(t, record)
        measure_update = (self.update_ratio_every and t % self.update_ratio_every == 0
                          and not self.guard.skip_next)
        self.measurer.update_record = record if measure_update else None
        self.measurer.sample_after = bool(self.update_ratio_every) and (t + 1) % self.update_ratio_every == 0

    # -- host side: rows, detectors, guard -----------------------------------------------------
    def _flush(self, mode: str) -> list[Event]:
        """Read every pending step back in one transfer, run the detectors, write the rows. The
        events found are returned ("collect": the caller decides), kept for the next decision
        ("defer": state_dict) or decided on this rank alone ("local": close, stop)."""
        records, self._pending = self._pending, []
        events: list[Event] = []
        try:
            events = self._read(records)
        except Exception as error:  # noqa: BLE001
            self._internal_error(error)
        if mode == "defer":
            self._deferred.extend(events)
        elif mode == "local":
            self._handle(events, {}, agree=False)
            self._close_incidents()
        return events if mode == "collect" else []

    def _close_incidents(self) -> None:
        """Close the incidents quiet for longer than the gap, once the flushed events are in."""
        if self._flushed_to is not None:
            self.sinks.incidents([], self.tracker.close_before(self._flushed_to))
            self._flushed_to = None

    def _read(self, records: list[StepRecord]) -> list[Event]:
        if not records:
            return []
        rows, events, device_skipped = self.detection.read(records, self._skipped)
        self.skipped_steps.extend(device_skipped)
        self._skipped.update(device_skipped)
        self.sinks.rows(rows)
        self._flushed_to = records[-1].step
        return events

    def _handle(self, events: list[Event], data: dict[str, Any], agree: bool = True) -> None:
        """Record events, apply the policy's interventions (each one an event too), group them
        into incidents. Under torch.distributed every rank carries out the same interventions."""
        events, self._deferred = self._deferred + events, []
        planned = self.guard.plan(events)
        dirty = any(e.severity != "info" for e in events)
        if agree and self.agreement.active:
            self._agreed_step = self.step
            planned, dirty = self.agreement.agree(planned, dirty, self.step, data)
        if dirty:
            self._clean_since_snapshot = False
        if not (events or planned):
            return
        applied = self.guard.apply(planned)
        self._emit(events + applied)
        self.sinks.incidents(*self.tracker.add(events + applied))
        stop_event, self.guard.stop_event = self.guard.stop_event, None
        if stop_event is not None:
            self._flush_quietly("local")
            self.stop_requested, self.guard.skip_next = stop_event, True  # the step is not taken
            if self.on_stop == "raise":
                raise TrainingStopped(stop_event)

    def _maybe_snapshot(self, record: StepRecord) -> None:
        """At a sampled step: save the weights as they are now (before this step's update) if the
        window since the previous sampled step raised no warning and this step's gradients are
        finite. Each sampled step starts a new window."""
        clean, self._clean_since_snapshot = self._clean_since_snapshot, True
        due = self.snapshot.step is None or record.step - self.snapshot.step >= self.policy.snapshot_every
        if not due or not clean or self.guard.skip_next:
            return
        host, fast = record.host, record.fast
        bad = (host["nonfinite"] or host["outlier"]) if "nonfinite" in host else bool(
            fast[NONFINITE] + fast[OUTLIER] if isinstance(fast, list) else (fast[NONFINITE] + fast[OUTLIER]).item())
        if bad:
            return
        self.snapshot.save(self.model, self.optimizer, record.step)

    def _emit(self, events: list[Event]) -> None:
        self.events.extend(events)
        self.sinks.events(events)

    # -- the optimizer's step honours the guard -------------------------------------------------
    def _take_skip(self) -> bool:
        skip = self.guard.take_skip()
        if skip:
            self.skipped_steps.append(self.step - 1)
            self._skipped.add(self.step - 1)
            self.measurer.update_record = None
        return skip

    # -- resume -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The monitor's state for a checkpoint (monitor.state): plain types that
        torch.load(..., weights_only=True) and JSON read. Writes the pending rows first (one host
        read); events they raise are decided at the next step, here or after a resume."""
        self._flush("defer")
        return monitor_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from a state_dict(): call after building the Monitor, before the first observe().
        The step number continues from the state unless the Monitor was given start_step."""
        if self._pending or self.events:
            raise UsageError("load_state_dict() must come before the first observe()")
        load_monitor_state(self, state, keep_step=self._explicit_start)

    # -- errors, close --------------------------------------------------------------------------
    def _count_error(self) -> None:
        self.internal_errors += 1

    def _internal_error(self, error: BaseException) -> None:
        self.internal_errors += 1
        if self.internal_errors == 1:
            detail = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            log.error("stablelab monitor: internal error (training continues; logged once):\n%s", detail)
            warnings.warn(f"stablelab monitor: internal error, training continues: {error!r}",
                          RuntimeWarning, stacklevel=3)

    def _flush_quietly(self, mode: str) -> None:
        try:
            self._flush(mode)
        except TrainingStopped:
            raise
        except Exception as error:  # noqa: BLE001
            self._internal_error(error)

    def event_counts(self) -> dict[str, int]:
        return event_counts(self)

    def summary(self) -> dict[str, Any]:
        return summary(self)

    def close(self) -> dict[str, Any]:
        """Flush what is pending, close open incidents, seal the log folder, remove hooks, restore
        optimizer.step."""
        if self._closed:
            return self.summary()
        try:
            self._flush_quietly("local")
        except TrainingStopped:  # training is over anyway; the event is recorded
            pass
        self.sinks.incidents([], self.tracker.close_all())
        self._closed = True
        self.measurer.disarm()
        for handle in self._handles:
            handle.remove()
        self._step.restore()
        summary = self.summary()
        self.sinks.close(summary)
        return summary

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
