"""What a monitor's config.json records about it: the model, the optimizer, the signals it
measures, its policy and every detector's settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stablelab.monitor.core import Monitor


def describe(monitor: "Monitor") -> dict[str, Any]:
    return {
        "kind": "monitor", "model": type(monitor.model).__name__,
        "optimizer": type(monitor.optimizer).__name__,
        "n_params": sum(p.numel() for p in monitor.params), "n_tensors": len(monitor.params),
        "sync_every": monitor.sync_every, "update_ratio_every": monitor.update_ratio_every,
        "sharpness_every": monitor.sharpness_every, "opposing_every": monitor.opposing_every,
        "attention_layers": [layer.name for layer in monitor.attention_layers],
        "logits_module": monitor.logits_module_name,
        "policy": {k: list(v) for k, v in monitor.policy.actions.items()},
        "skip_on_device": sorted(monitor.guard.device_skips),
        "detectors": {d.kind: d.settings() for d in monitor.detectors},
        "every_step_detectors": sorted(monitor._immediate),
    }
