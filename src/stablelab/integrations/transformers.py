"""stablelab's monitor as a Hugging Face `TrainerCallback`.

    trainer = Trainer(model, args, train_dataset=..., callbacks=[StabilityCallback(log_dir="runs/m")])

Gradients are read in `on_pre_optimizer_step`. Note the Trainer clips gradients (max_grad_norm,
default 1.0) *before* that hook, so the gradient norm seen is the clipped one: set
`max_grad_norm=0` and the policy `{"grad_spike": "clip"}` to see raw gradients and let the guard
clip. The loss is read from the model's output (`output.loss`, averaged over the micro-batches of
one optimizer step) by a forward hook. The guard's decision is honoured inside the optimizer's step."""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from stablelab.monitor import Monitor


class StabilityCallback(TrainerCallback):
    """Monitor(model, optimizer, log_dir, policy, **monitor_kwargs) attached to a transformers Trainer."""

    def __init__(self, log_dir=None, policy=None, **monitor_kwargs: Any):
        self.log_dir, self.policy, self.monitor_kwargs = log_dir, policy, monitor_kwargs
        self.monitor: Monitor | None = None
        self.finished: Monitor | None = None
        self._losses: list[torch.Tensor] = []
        self._hook = None

    def _on_forward(self, _module, _inputs, output) -> None:
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, dict):
            loss = output.get("loss")
        if isinstance(loss, torch.Tensor) and torch.is_grad_enabled():
            self._losses.append(loss.detach())

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and self._hook is None:
            self._hook = model.register_forward_hook(self._on_forward)

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.monitor is None and model is not None and optimizer is not None:
            self.monitor = Monitor(model, optimizer, self.log_dir, self.policy, **self.monitor_kwargs)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.monitor is None:
            return
        losses, self._losses = self._losses, []
        self.monitor.observe(torch.stack(losses).mean() if losses else None)

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.close()
            self.finished, self.monitor = self.monitor, None  # a later train() starts a new monitor
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @property
    def events(self):
        current = self.monitor or self.finished
        return current.events if current is not None else []
