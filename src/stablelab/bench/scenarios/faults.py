"""The planted faults: learning-rate runaways, logit transforms, bad batches, gradient faults."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from stablelab.bench.scenarios.base import Scenario
from stablelab.bench.scenarios.tasks import Task


def lr_multiplier(scenario: Scenario, step: int) -> float:
    """The factor on the schedule's lr at `step`: lr_runaway compounds `rate` from fault_step on
    (rate^(step - fault_step + 1)); lr_jump multiplies by `factor` from fault_step on."""
    if scenario.fault_step is None or step < scenario.fault_step:
        return 1.0
    if scenario.fault == "lr_runaway":
        return scenario.settings.get("rate", 1.03) ** (step - scenario.fault_step + 1)
    if scenario.fault == "lr_jump":
        return scenario.settings.get("factor", 100)
    return 1.0



def _logits_transform(scenario: Scenario, step: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """logit_drift adds offset_per_step * (steps since the fault) to every logit (softmax-invariant:
    the loss is unchanged while log Z drifts; Wortsman et al. 2023, sec 3.2); bf16_collapse scales
    the logits by growth^(steps since the fault) until softmax collapses in bfloat16 (Prieto et al. 2025, sec 3)."""
    if scenario.fault_step is None or step < scenario.fault_step:
        return None
    elapsed = step - scenario.fault_step + 1
    if scenario.fault == "logit_drift":
        offset = scenario.settings.get("offset_per_step", 0.5) * elapsed
        return lambda logits: logits + offset
    if scenario.fault == "bf16_collapse":
        scale = scenario.settings.get("growth", 1.05) ** elapsed
        return lambda logits: logits * scale
    return None



class _FaultState:
    """What the model's forward hooks need to know: the current step, and whether to poison."""

    def __init__(self, scenario: Scenario, task: Task):
        self.scenario, self.step, self.poison = scenario, 0, None
        task.head.register_forward_hook(self._on_logits)  # before hook.attach: the monitor sees the fault
        if task.embedding is not None:
            task.embedding.register_forward_hook(self._on_embedding)

    def _on_logits(self, _module, _inputs, output):
        transform = _logits_transform(self.scenario, self.step)
        return None if transform is None else transform(output)

    def _on_embedding(self, _module, _inputs, output):
        if self.poison is None:
            return None
        output = output.clone()
        output.view(-1)[0] = self.poison
        return output



def _fault_batch(scenario: Scenario, task: Task, state: _FaultState, inputs, targets, g: torch.Generator):
    """The batch at fault_step: one non-finite input element, random labels or shuffled targets."""
    fault = scenario.fault
    if fault in ("nan_batch", "inf_batch"):
        value = math.nan if fault == "nan_batch" else math.inf
        if task.embedding is not None:  # token ids cannot hold NaN: poison the embedding's output
            state.poison = value
        else:
            inputs = inputs.clone()
            inputs.view(-1)[0] = value
    elif fault == "random_labels":
        targets = torch.randint(task.classes, targets.shape, generator=g).to(targets.device)
    elif fault == "shuffled_tokens":  # a random permutation of the targets within each sequence
        order = torch.rand(targets.shape, generator=g).argsort(dim=-1).to(targets.device)
        targets = targets.gather(-1, order)
    return inputs, targets



def _plant_gradient_fault(scenario: Scenario, step: int, model: nn.Module) -> None:
    """grad_spike: every gradient times `factor`, at fault_step only (after unscaling)."""
    if scenario.fault == "grad_spike" and step == scenario.fault_step:
        factor = scenario.settings.get("factor", 1000)
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)



def _stops_training(error: BaseException) -> bool:
    return type(error).__name__ == "TrainingStopped" or getattr(error, "stops_training", False) is True
