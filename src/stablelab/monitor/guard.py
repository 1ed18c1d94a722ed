"""The guard: a policy mapping event kinds to interventions, the interventions registry, and the
snapshots that `rollback` restores.

Interventions (each applied one is itself an event, kind = the action's name):
  warn           record the event only (the default for everything but `nonfinite`, `grad_outlier`)
  skip           the optimizer makes no update and its state is untouched (or, decided on the
                 device, the step's gradients are zeroed: see Policy.skip_mode)
  clip           scale the gradients to `clip_norm` (default: the mean grad norm of the last 128 steps)
  reset_moments  zero the optimizer's moment buffers, keep its step count (SPAM's reset)
  lr_backoff     multiply the learning-rate schedule by `lr_factor` from now on (persists through
                 every torch and Hugging Face scheduler and loops that write group["lr"])
  rollback       restore model and optimizer from the last good snapshot and skip this step
  stop           end training: raise TrainingStopped carrying the diagnosis (Monitor on_stop="raise")
                 or set monitor.stop_requested and skip the step (on_stop="flag")
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from stablelab.errors import UsageError
from stablelab.monitor.events import Event

# Actions that must be decided before the optimizer steps (the detector then runs every step).
BEFORE_STEP = {"skip", "clip", "reset_moments", "rollback", "stop"}
# Order in which actions triggered at one step are applied.
ORDER = ("stop", "rollback", "skip", "reset_moments", "clip", "lr_backoff", "warn")
# Kinds the measurement flags on the device; a `skip` for them needs no host read (see Guard).
DEVICE_DECIDED = ("nonfinite", "grad_outlier")
MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "exp_avg_diff",
               "exp_avg_slow", "neg_pre_grad")
SKIP_MODES = ("auto", "host", "device")

@dataclass
class Policy:
    """Which interventions each event kind triggers. `actions` maps a detector kind (or "*", the
    fallback) to an action name or a list of them. Default: skip on a non-finite step and on an
    extreme gradient outlier, warn otherwise.

    skip_mode: how a skip for `nonfinite` / `grad_outlier` is carried out. "host": the flag is read
    back before the optimizer step and the step is not taken (weights and state bit-identical);
    "device": no host read, the step's gradients are zeroed on the device (masked_fill_), so the
    optimizer takes a step with no new information (moments decay one step, as after an empty
    batch); "auto" (default): host on CPU, where reading a number is no synchronisation, device on
    an accelerator."""

    actions: dict[str, Any] = field(default_factory=lambda: {"nonfinite": "skip", "grad_outlier": "skip",
                                                             "*": "warn"})
    clip_norm: float | None = None
    lr_factor: float = 0.5
    snapshot_every: int = 100
    snapshot_dir: str | None = None  # None: snapshots in memory; else one file, written atomically
    skip_mode: str = "auto"

    def __post_init__(self):
        if not isinstance(self.actions, dict):
            raise UsageError(f"policy actions must be a dict kind -> action(s), got {type(self.actions).__name__}")
        if self.skip_mode not in SKIP_MODES:
            raise UsageError(f"skip_mode must be one of {SKIP_MODES}, got {self.skip_mode!r}")
        normalised = {}
        for kind, value in self.actions.items():
            if not isinstance(value, (str, list, tuple)):
                raise UsageError(f"policy action for {kind!r} must be a name or a list of names, got {value!r}")
            names = (value,) if isinstance(value, str) else tuple(value)
            unknown = [n for n in names if n not in INTERVENTIONS]
            if unknown:
                raise UsageError(f"unknown intervention(s) {unknown} for {kind!r}; "
                                 f"available: {', '.join(INTERVENTIONS)}")
            normalised[kind] = names
        normalised.setdefault("*", ("warn",))
        self.actions = normalised
        if not isinstance(self.lr_factor, (int, float)) or not 0 < self.lr_factor <= 1:
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
    """Scale the schedule, not only today's lr: multiply every param group's persistent
    `lr_backoff` factor (kept in the param group, so it is saved in the optimizer's state_dict).
    The monitor's optimizer step applies it around each step (`applied_lr_backoff`), so whatever a
    scheduler or the training loop writes into `group["lr"]` is scaled too. Returns the effective
    learning rates."""
    for group in optimizer.param_groups:
        group["lr_backoff"] = group.get("lr_backoff", 1.0) * factor
    return [effective_lr(group) for group in optimizer.param_groups]


def effective_lr(group: dict) -> float:
    """The learning rate a step of this param group really uses (schedule x lr_backoff)."""
    return float(group["lr"]) * group.get("lr_backoff", 1.0)


@contextmanager
def applied_lr_backoff(optimizer: torch.optim.Optimizer):
    """Within the block, group["lr"] is multiplied by the group's lr_backoff; afterwards the exact
    value the schedule wrote is restored, so schedulers that read group["lr"] back (chainable
    forms) keep computing from their own values."""
    saved = []
    for group in optimizer.param_groups:
        factor = group.get("lr_backoff", 1.0)
        if factor != 1.0:
            saved.append((group, group["lr"]))
            group["lr"] = group["lr"] * factor
    try:
        yield
    finally:
        for group, lr in saved:
            group["lr"] = lr


@torch.no_grad()
def clip_gradients(grads: list[torch.Tensor], total_norm: float, max_norm: float) -> float:
    """Scale gradients so their global norm is at most max_norm; returns the factor applied."""
    if total_norm <= max_norm or total_norm == 0:
        return 1.0
    from stablelab.optim.transforms import clip_by_global_norm  # the one global-norm clip (proxy run's too)

    # the norm is known (measured on the host): the transform applies min(1, max / (norm + 1e-6))
    clip_by_global_norm(grads, max_norm, total_norm=torch.tensor(total_norm, dtype=torch.float64))
    return max_norm / (total_norm + 1e-6)  # same epsilon as torch.nn.utils.clip_grad_norm_

def intervention_event(action: str, cause: Event, message: str, **data: Any) -> Event:
    return Event(action, cause.step, "info", message, {"cause": cause.kind, **data})


# -- the interventions registry: name -> what it does, and the function that does it -----------
@dataclass(frozen=True)
class Intervention:
    description: str
    apply: Callable[["Guard", Event], "Event | None"]


def _warn(guard: "Guard", cause: Event) -> None:
    return None


def _stop(guard: "Guard", cause: Event) -> Event:
    guard.stop_event = cause
    return intervention_event("stop", cause, f"training stopped: {cause.message}")


def _skip(guard: "Guard", cause: Event) -> Event | None:
    if cause.data.get("device_skipped"):
        return intervention_event("skip", cause, f"gradients of step {cause.step} zeroed on the device "
                                  "before the optimizer step (no host read)", mode="device")
    if guard.skip_next:
        return None
    guard.skip_next = True
    return intervention_event("skip", cause, f"optimizer step {cause.step} skipped; weights and "
                              "optimizer state unchanged", mode="host")


def _reset_moments(guard: "Guard", cause: Event) -> Event:
    n = reset_moments(guard.optimizer)
    guard.measurer.reset_history()  # no second-moment history until the next refresh
    return intervention_event("reset_moments", cause, f"zeroed {n} moment tensors (step counts kept)")


def _clip(guard: "Guard", cause: Event) -> Event:
    total = cause.data.get("grad_norm")
    if total is None or not math.isfinite(total):
        return intervention_event("clip", cause, "not clipped: gradient norm unknown or non-finite")
    history = guard.measurer.norm_history
    limit = guard.policy.clip_norm
    if limit is None:
        limit = (sum(history) / len(history)) if history else total
    grads = [p.grad for p in guard.measurer.params if p.grad is not None]
    factor = clip_gradients(grads, total, limit)
    return intervention_event("clip", cause, f"gradients scaled by {factor:.3g} "
                              f"(norm {total:.4g} -> {min(total, limit):.4g})", factor=factor, max_norm=limit)


def _lr_backoff(guard: "Guard", cause: Event) -> Event:
    lrs = lr_backoff(guard.optimizer, guard.policy.lr_factor)
    return intervention_event("lr_backoff", cause, f"learning-rate schedule x{guard.policy.lr_factor:g} "
                              f"from now on -> {lrs}", lr=lrs)


def _rollback(guard: "Guard", cause: Event) -> Event:
    guard.skip_next = True
    if guard.snapshot is None or guard.snapshot.step is None:
        return intervention_event("rollback", cause, "no good snapshot yet: step skipped instead")
    restored = guard.snapshot.restore(guard.model, guard.optimizer)
    guard.measurer.reset_history()
    guard.measurer.refresh_second_moments()
    return intervention_event("rollback", cause, f"model and optimizer restored to the snapshot of "
                              f"step {restored}; this step skipped, batches since then dropped",
                              snapshot_step=restored)


INTERVENTIONS: dict[str, Intervention] = {
    "warn": Intervention("record the event only", _warn),
    "skip": Intervention("no optimizer update this step (host), or the step's gradients zeroed on "
                         "the device", _skip),
    "clip": Intervention("scale gradients to clip_norm (default: running mean grad norm)", _clip),
    "reset_moments": Intervention("zero the optimizer's moments, keep its step count (SPAM)", _reset_moments),
    "lr_backoff": Intervention("multiply the learning-rate schedule by lr_factor, persistently", _lr_backoff),
    "rollback": Intervention("restore the last good snapshot of model and optimizer, skip this step", _rollback),
    "stop": Intervention("end training with the diagnosis (TrainingStopped, or stop_requested)", _stop),
}


class Guard:
    """Decides: answers a step's events with the policy's interventions (each applied one an info
    event), in ORDER; remembers whether the next optimizer step must be skipped."""

    def __init__(self, policy: Policy, model, optimizer, measurer, snapshot: "Snapshot | None"):
        self.policy, self.model, self.optimizer = policy, model, optimizer
        self.measurer, self.snapshot = measurer, snapshot
        self.skip_next = False
        self.stop_event: Event | None = None
        on_device = measurer.device.type != "cpu"
        device_mode = policy.skip_mode == "device" or (policy.skip_mode == "auto" and on_device)
        # kinds whose skip is carried out on the device, with no host read per step
        self.device_skips = {kind for kind in DEVICE_DECIDED
                             if device_mode and set(policy.for_kind(kind)) <= {"skip", "warn"}
                             and "skip" in policy.for_kind(kind)}

    def decide(self, events: list[Event]) -> list[Event]:
        return self.apply(self.plan(events))

    def plan(self, events: list[Event]) -> dict[str, Event]:
        """action -> the event that calls for it (the first one), by the policy."""
        actions: dict[str, Event] = {}
        for event in events:
            for action in self.policy.for_kind(event.kind):
                actions.setdefault(action, event)
        return actions

    def apply(self, actions: dict[str, Event]) -> list[Event]:
        """Carry out the planned actions in ORDER; returns the interventions' events."""
        applied = []
        for action in ORDER:
            cause = actions.get(action)
            if cause is not None:
                event = INTERVENTIONS[action].apply(self, cause)
                if event is not None:
                    applied.append(event)
        return applied

    def take_skip(self) -> bool:
        skip, self.skip_next = self.skip_next, False
        return skip
