"""The guard: a policy mapping event kinds to interventions, the interventions registry, and the
snapshots that `rollback` restores.

Interventions (each applied one is itself an event, kind = the action's name):
  warn           record the event only (the default for everything but `nonfinite`)
  skip           the optimizer makes no update and its state is untouched
  clip           scale the gradients to `clip_norm` (default: the mean grad norm of the last 128 steps)
  reset_moments  zero the optimizer's moment buffers, keep its step count (SPAM's reset)
  lr_backoff     multiply every param group's lr by `lr_factor`
  rollback       restore model and optimizer from the last good snapshot and skip this step
  stop           raise TrainingStopped carrying the diagnosis
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stablelab.errors import UsageError
from stablelab.monitor.events import Event

INTERVENTIONS: dict[str, str] = {
    "warn": "record the event only",
    "skip": "no optimizer update this step; optimizer state untouched",
    "clip": "scale gradients to clip_norm (default: running mean grad norm)",
    "reset_moments": "zero the optimizer's moments, keep its step count (SPAM)",
    "lr_backoff": "multiply the learning rate by lr_factor",
    "rollback": "restore the last good snapshot of model and optimizer, skip this step",
    "stop": "raise TrainingStopped with the diagnosis",
}
# Actions that must be decided before the optimizer steps (the detector then runs every step).
BEFORE_STEP = {"skip", "clip", "reset_moments", "rollback", "stop"}
# Order in which actions triggered at one step are applied.
ORDER = ("stop", "rollback", "skip", "reset_moments", "clip", "lr_backoff", "warn")
MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "exp_avg_diff",
               "exp_avg_slow", "neg_pre_grad")

@dataclass
class Policy:
    """Which interventions each event kind triggers. `actions` maps a detector kind (or "*", the
    fallback) to an action name or a list of them. Default: skip on non-finite, warn otherwise."""

    actions: dict[str, Any] = field(default_factory=lambda: {"nonfinite": "skip", "*": "warn"})
    clip_norm: float | None = None
    lr_factor: float = 0.5
    snapshot_every: int = 100
    snapshot_dir: str | None = None  # None: snapshots in memory; else one file, written atomically

    def __post_init__(self):
        normalised = {}
        for kind, value in self.actions.items():
            names = (value,) if isinstance(value, str) else tuple(value)
            unknown = [n for n in names if n not in INTERVENTIONS]
            if unknown:
                raise UsageError(f"unknown intervention(s) {unknown} for {kind!r}; "
                                 f"available: {', '.join(INTERVENTIONS)}")
            normalised[kind] = names
        normalised.setdefault("*", ("warn",))
        self.actions = normalised
        if not 0 < self.lr_factor <= 1:
            raise UsageError(f"lr_factor must be in (0, 1], got {self.lr_factor}")

    @classmethod
    def default(cls) -> "Policy":
        return cls()

    def for_kind(self, kind: str) -> tuple[str, ...]:
        return self.actions.get(kind, self.actions["*"])

    def acts_before_step(self, kind: str) -> bool:
        return bool(BEFORE_STEP.intersection(self.for_kind(kind)))

    def uses(self, action: str) -> bool:
        return any(action in names for names in self.actions.values())

class Snapshot:
    """The last good state of model and optimizer: deep copies in memory, or one file on disk
    written to a temporary name then renamed (read back with weights_only=True)."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory else None
        self.step: int | None = None
        self._state: dict[str, Any] | None = None

    @property
    def path(self) -> Path | None:
        return self.directory / "snapshot.pt" if self.directory else None

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
        if self.directory is None:
            self._state = copy.deepcopy(state)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".snapshot.", suffix=".tmp")
            os.close(fd)
            try:
                torch.save(state, tmp)
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        self.step = step

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
        if self.step is None:
            raise LookupError("no snapshot taken yet")
        if self.directory is None:
            state = copy.deepcopy(self._state)
        else:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"])

def reset_moments(optimizer: torch.optim.Optimizer) -> int:
    """Zero every moment buffer in the optimizer's state (step counts kept, as SPAM does).
    Returns how many tensors were reset."""
    count = 0
    for state in optimizer.state.values():
        for key in MOMENT_KEYS:
            value = state.get(key)
            if isinstance(value, torch.Tensor):
                value.zero_()
                count += 1
    return count

def lr_backoff(optimizer: torch.optim.Optimizer, factor: float) -> list[float]:
    """lr <- factor * lr in every param group (and `initial_lr`, which schedulers start from)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
        if "initial_lr" in group:
            group["initial_lr"] = group["initial_lr"] * factor
    return [group["lr"] for group in optimizer.param_groups]

@torch.no_grad()
def clip_gradients(grads: list[torch.Tensor], total_norm: float, max_norm: float) -> float:
    """Scale gradients so their global norm is at most max_norm; returns the factor applied."""
    if total_norm <= max_norm or total_norm == 0:
        return 1.0
    factor = max_norm / (total_norm + 1e-6)  # same epsilon as torch.nn.utils.clip_grad_norm_
    torch._foreach_mul_(grads, factor)
    return factor

def intervention_event(action: str, cause: Event, message: str, **data: Any) -> Event:
    return Event(action, cause.step, "info", message, {"cause": cause.kind, **data})
