"""stablelab's monitor as a Hugging Face `TrainerCallback` (transformers >= 4.45).

    trainer = Trainer(model, args, train_dataset=..., callbacks=[StabilityCallback(log_dir="runs/m")])

Gradients are read in `on_pre_optimizer_step`, which the Trainer calls since transformers 4.45 (an
older Trainer never calls it, so the callback refuses to start there). Note the Trainer clips
gradients (max_grad_norm, default 1.0) *before* that hook, so the gradient norm seen is the clipped
one: set `max_grad_norm=0` and the policy `{"grad_spike": "clip"}` to see raw gradients and let the
guard clip. The loss is read from the model's output (`output.loss`, averaged over the micro-batches
of one optimizer step) by a forward hook. The guard's decision is honoured inside the optimizer's
step; a `stop` decision skips the step and sets `control.should_training_stop`, so `train()` returns
after it.

The monitor's state (Monitor.state_dict) is saved in each checkpoint's `trainer_state.json`, under
`stateful_callbacks["stablelab.monitor"]`, and `train(resume_from_checkpoint=...)` continues from it.
The callback is deliberately not an `ExportableState`: with
`restore_callback_states_from_checkpoint=True` the Trainer would replace such a callback with a new
one built from JSON arguments, losing the live monitor and the settings that are not JSON."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import transformers
from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler

from stablelab.errors import UsageError
from stablelab.monitor import Monitor

STATE_KEY = "stablelab.monitor"  # not a class name, so the Trainer never rebuilds a callback from it
HOOK_SINCE = "4.45"  # transformers release whose Trainer first calls on_pre_optimizer_step


class StabilityCallback(TrainerCallback):
    """Monitor(model, optimizer, log_dir, policy, **monitor_kwargs) attached to a transformers Trainer.

    monitor_kwargs may set on_stop="raise" to have TrainingStopped raised out of train() instead."""

    def __init__(self, log_dir=None, policy=None, **monitor_kwargs: Any):
        if "on_pre_optimizer_step" not in vars(CallbackHandler):  # what the Trainer calls
            raise UsageError(f"stablelab's StabilityCallback needs transformers>={HOOK_SINCE} (the Trainer "
                             f"calls on_pre_optimizer_step since then); this is {transformers.__version__}")
        self.log_dir, self.policy = log_dir, policy
        self.monitor_kwargs = {"on_stop": "flag", **monitor_kwargs}
        self.monitor: Monitor | None = None
        self.finished: Monitor | None = None
        self._restored: dict[str, Any] | None = None  # from the checkpoint, applied with the monitor
        self._start_step = 0
        self._losses: list[torch.Tensor] = []
        self._hook = None

    def _on_forward(self, _module, _inputs, output) -> None:
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, dict):
            loss = output.get("loss")
        if isinstance(loss, torch.Tensor) and torch.is_grad_enabled():
            if self.monitor is not None:
                self.monitor.measurer.see_loss(loss)  # the task, from the graph that detaching drops
            self._losses.append(loss.detach())

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # `state` is the checkpoint's TrainerState when resuming (global_step > 0), a fresh one otherwise
        self._restored, self._start_step = None, state.global_step
        saved = state.stateful_callbacks.get(STATE_KEY) if state.global_step > 0 else None
        if saved is not None and saved.get("step") == state.global_step:
            self._restored = saved
        elif state.global_step > 0:
            warnings.warn(f"stablelab monitor: the checkpoint of step {state.global_step} holds no monitor state "
                          "of that step; the monitor continues the step numbers with fresh detectors",
                          RuntimeWarning, stacklevel=2)
        if model is not None and self._hook is None:
            self._hook = model.register_forward_hook(self._on_forward)

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.monitor is None and model is not None and optimizer is not None:
            restored, self._restored = self._restored, None
            self.monitor = Monitor(model, optimizer, self.log_dir, self.policy,
                                   start_step=None if restored else self._start_step, **self.monitor_kwargs)
            if restored:
                self.monitor.load_state_dict(restored)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.monitor is None:
            return None
        losses, self._losses = self._losses, []
        self.monitor.observe(torch.stack(losses).mean() if losses else None)
        if self.monitor.stop_requested is not None:  # this step is skipped by the monitor
            control.should_training_stop = True
        return control

    def on_step_end(self, args, state, control, **kwargs):
        self._save_if_due(state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._save_if_due(state, control)

    def _save_if_due(self, state, control) -> None:
        """Put the monitor's state into the TrainerState just before the Trainer writes a checkpoint.
        DefaultFlowCallback, first in the Trainer's list, has set should_save by now; with
        save_strategy="best" the save is decided after evaluating, hence should_evaluate too."""
        if self.monitor is not None and (control.should_save or control.should_evaluate):
            state.stateful_callbacks[STATE_KEY] = self.monitor.state_dict()

    def on_save(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(STATE_KEY)
        if self.monitor is not None and (saved is None or saved.get("step") != state.global_step):
            warnings.warn(f"stablelab monitor: the checkpoint of step {state.global_step} was saved without the "
                          "monitor's state (a save requested after on_step_end); a resume from it starts "
                          "fresh detectors", RuntimeWarning, stacklevel=2)

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
