"""What a monitor records about itself: in config.json the model, the optimizer, the signals it
measures, its policy and every detector's settings; in result.json its summary."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from stablelab.monitor.signal_registry import SIGNALS

if TYPE_CHECKING:
    from stablelab.monitor.core import Monitor


def describe(monitor: "Monitor") -> dict[str, Any]:
    return {
        "kind": "monitor", "model": type(monitor.model).__name__,
        "optimizer": type(monitor.optimizer).__name__,
        "n_params": sum(p.numel() for p in monitor.params), "n_tensors": len(monitor.params),
        "sync_every": monitor.sync_every, "update_ratio_every": monitor.update_ratio_every,
        "sharpness_every": monitor.sharpness_every, "opposing_every": monitor.opposing_every,
        "signals": {signal.name: signal.schedule for signal in SIGNALS.values()},
        "attention_layers": [layer.name for layer in monitor.attention_layers],
        "logits_module": monitor.logits_module_name,
        "policy": {k: list(v) for k, v in monitor.policy.actions.items()},
        "skip_on_device": sorted(monitor.guard.device_skips),
        "detectors": {d.kind: d.settings() for d in monitor.detectors},
        "every_step_detectors": sorted(monitor._immediate),
    }


def event_counts(monitor: "Monitor") -> dict[str, int]:
    """Events per kind, the sessions before a load_state_dict() included."""
    counts = dict(monitor._earlier_counts)
    for event in monitor.events:
        counts[event.kind] = counts.get(event.kind, 0) + 1
    return counts


def summary(monitor: "Monitor") -> dict[str, Any]:
    counts = event_counts(monitor)
    return {"steps": monitor.step, "events": counts, "skipped_steps": len(monitor.skipped_steps),
            "incidents": [i.to_dict() for i in monitor.incidents],
            "internal_errors": monitor.internal_errors, "wall_s": time.time() - monitor.started,
            "diverged": counts.get("nonfinite", 0) > 0,
            "task": monitor.measurer.task, "task_reason": monitor.measurer.task_reason}
