"""Rows -> events: the host side of the monitor. Each step's fast numbers are read back at once for
the detectors whose action must precede the optimizer step (`now`); every other signal is read
back in one transfer per flush (`read`) and runs through the remaining detectors."""

from __future__ import annotations

import math
from typing import Any, Callable

from stablelab.monitor.detectors import Detector
from stablelab.monitor.events import Event
from stablelab.monitor.guard import DEVICE_DECIDED
from stablelab.monitor.measure import FAST, NONFINITE, Measurer
from stablelab.monitor.readback import fast_values, read_back
from stablelab.monitor.signal_registry import SIGNALS, StepRecord, row_of


class Detection:
    """detectors: every detector; immediate: the kinds run every step before the optimizer step;
    device_skips: the kinds whose skip is carried out on the device; on_error: called with an
    exception a detector raised (the others still run)."""

    def __init__(self, detectors: list[Detector], measurer: Measurer, immediate: set[str],
                 device_skips: set[str], on_error: Callable[[BaseException], None]):
        self.detectors, self.measurer = detectors, measurer
        self.immediate, self.device_skips, self.on_error = immediate, device_skips, on_error
        self.names = measurer.names
        self.update_detector = next((d for d in detectors if d.kind == "update_ratio"), None)
        self.spike_detector = next((d for d in detectors if d.kind == "grad_spike"), None)

    def share_spike_level(self) -> None:
        """The step numbers stop trusting steps at the level grad_spike now flags (its robust z)."""
        if self.spike_detector is not None:
            self.measurer.numbers.set_suspect_level(self.spike_detector.suspect_level())

    def check(self, detector: Detector, step: int, row: dict[str, Any]) -> list[Event]:
        try:  # one broken detector must not silence the others
            return detector.check(step, row)
        except Exception as error:  # noqa: BLE001
            self.on_error(error)
            return []

    def note_norm(self, row: dict[str, Any]) -> None:
        value = row.get("grad_norm")
        if (isinstance(value, float) and math.isfinite(value) and row.get("trusted", 1)
                and not (row.get("nonfinite") or row.get("outlier"))):
            self.measurer.norm_history.append(value)

    def now(self, record: StepRecord, previous: StepRecord | None) -> list[Event]:
        """Read this step's step numbers (and the previous step's update ratio, in the same read)
        and run the detectors whose action must precede the step."""
        update = previous.values.get("update_ratio") if previous is not None else None
        with_update = update is not None and self.update_detector is not None and update.numel() > 0
        values = fast_values(record.fast, update if with_update else None)  # one host read
        read = {"step_numbers": values[:len(FAST)]}
        if read["step_numbers"][NONFINITE]:
            read["gradient_norms"] = record.norms.tolist()
        host = {"step": record.step, "lr": record.lr,
                **SIGNALS["step_numbers"].to_row(read, record, self.measurer)}
        record.host.update(host)
        events = []
        if with_update:
            row = {"step": previous.step, "lr": previous.lr, "update_ratio_max": values[-2],
                   "update_param": self.names[self.measurer.matrices[int(values[-1])]]}
            events.extend(self.check(self.update_detector, previous.step, row))
            previous.done.add("update_ratio")
        for detector in self.detectors:
            if detector.kind in self.immediate:
                events.extend(self.check(detector, record.step, host))
                record.done.add(detector.kind)
        self.note_norm(host)
        if self.spike_detector is not None and self.spike_detector.kind in self.immediate:
            self.share_spike_level()
        return events

    def read(self, records: list[StepRecord], skipped: set[int]) -> tuple[list[dict], list[Event], list[int]]:
        """(rows, events, steps skipped on the device) of the pending records, in one transfer.
        skipped: the steps skipped so far (the rows' `skipped` column)."""
        reads = read_back(records, self.measurer.device)
        rows, events, device_skipped_steps = [], [], []
        for record, read in zip(records, reads):
            row = row_of(record, read, self.measurer)
            device_skipped = record.device_skip and (
                (row["nonfinite"] and "nonfinite" in self.device_skips)
                or (row["outlier"] and "grad_outlier" in self.device_skips))
            if device_skipped:
                device_skipped_steps.append(record.step)
            row["skipped"] = int(record.step in skipped or bool(device_skipped))
            for detector in self.detectors:
                if detector.kind not in record.done:
                    found = self.check(detector, record.step, row)
                    if device_skipped and detector.kind in DEVICE_DECIDED:
                        for event in found:
                            event.data["device_skipped"] = True
                    events.extend(found)
            if not record.done:
                self.note_norm(row)
            row["nonfinite"], row["outlier"] = int(row["nonfinite"]), int(row["outlier"])
            rows.append(row)
        return rows, events, device_skipped_steps
