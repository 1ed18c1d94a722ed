"""The optimizer's step honours the guard: the monitor wraps `optimizer.step` so that a step the
guard skipped is not taken, and a learning-rate back-off applies for the step it was meant for."""

from __future__ import annotations

import functools
import types
from typing import Any, Callable

import torch

from stablelab.monitor.guard import applied_lr_backoff


def inner_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer that holds the state (unwraps accelerate's AcceleratedOptimizer)."""
    inner = optimizer
    while True:  # accelerate's AcceleratedOptimizer (.optimizer), LightningOptimizer (._optimizer)
        wrapped = getattr(inner, "optimizer", None) or getattr(inner, "_optimizer", None)
        if not isinstance(wrapped, torch.optim.Optimizer) or wrapped is inner:
            return inner
        inner = wrapped


class StepWrapper:
    """Replaces `optimizer.step` with a bound method that asks `take_skip()` first; `restore()` puts
    the original back (if no one else re-wrapped it since). While `closed()` is true it only passes
    through."""

    def __init__(self, optimizer: torch.optim.Optimizer, take_skip: Callable[[], bool],
                 closed: Callable[[], bool]):
        self.optimizer = optimizer
        original = optimizer.step
        self._had_step_attr = "step" in optimizer.__dict__
        self._original_step = original

        def step(_optimizer, closure=None, **kwargs):
            if closed():
                return original(closure, **kwargs) if closure is not None else original(**kwargs)
            if closure is not None:
                # Lightning runs forward, backward and our hook inside the closure: run it first,
                # then decide (the optimizer would otherwise call it itself).
                with torch.enable_grad():
                    result = closure()
                if take_skip():
                    return result
                with applied_lr_backoff(_optimizer):
                    return original(**kwargs)
            if take_skip():
                return None
            with applied_lr_backoff(_optimizer):
                return original(**kwargs)

        functools.update_wrapper(step, getattr(original, "__func__", original))
        # A bound method, like the original: torch's LR schedulers re-wrap `step.__func__`.
        self.wrapper = types.MethodType(step, optimizer)
        optimizer.step = self.wrapper

    def restore(self) -> None:
        if self.optimizer.__dict__.get("step") is self.wrapper:
            if self._had_step_attr:
                self.optimizer.step = self._original_step
            else:
                del self.optimizer.step
