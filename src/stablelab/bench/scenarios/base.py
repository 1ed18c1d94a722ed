"""What a scenario is and what running it returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from stablelab.bench.scenarios.tasks import FAMILIES


KINDS = ("healthy", "fault")



FAULTS = ("grad_spike", "nan_batch", "inf_batch", "random_labels", "shuffled_tokens", "lr_runaway",
          "lr_jump", "attn_logit_growth", "logit_drift", "bf16_collapse")



_PROBE_AFTER_FAULT = 30  # the held-out probe is read at fault_step - 1 and fault_step + 30



@dataclass(frozen=True)
class Scenario:
    """One labelled run: a model family, its training settings and, for a fault, what is planted
    where. `settings` holds the training switches (optimizer, lr, scheduler, amp, accumulation,
    dtype, batch) and the fault's parameters (factor, rate, offset_per_step, growth)."""

    name: str
    kind: str
    family: str
    steps: int
    quick: bool
    fault: str | None = None
    fault_step: int | None = None
    window: int = 20
    settings: dict = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {self.family!r}")
        if (self.kind == "fault") != (self.fault is not None) or (self.fault is None) != (self.fault_step is None):
            raise ValueError(f"{self.name}: a fault scenario names its fault and fault_step, a healthy one neither")
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {self.fault!r}")



@dataclass
class Trace:
    """What one run did, as the benchmark scores it."""

    losses: list[float]  # training loss of every optimizer step (mean over micro-batches)
    lrs: list[float]  # lr of param group 0 used at each step
    probe_losses: dict[int, float]  # held-out probe loss at fault_step - 1, fault_step + 30, the last step
    diverged: bool  # the loss became non-finite and stayed so
    stopped_at: int | None  # the step where the hook stopped training
    wall_s: float



class NullHook:
    """A hook that watches nothing: the healthy baseline of the loop's cost, and for tests."""

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, task: str = "auto") -> None:
        pass

    def observe(self, step: int, loss: torch.Tensor) -> None:
        pass

    def close(self) -> None:
        pass
