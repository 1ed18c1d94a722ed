"""stablelab's monitor as a Lightning callback.

    trainer = lightning.Trainer(callbacks=[StabilityCallback(log_dir="runs/monitor")])

Gradients are read in `on_before_optimizer_step` (after backward, before Lightning clips and the
optimizer steps, so the gradient norm is the one before clipping); the loss comes from
`on_before_backward` (summed over accumulated micro-batches, which Lightning has already scaled).
The guard's decision is honoured inside the optimizer's step. Only the first optimizer is watched."""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the standalone package name
    import pytorch_lightning as pl

from stablelab.monitor import Monitor


class StabilityCallback(pl.Callback):
    """Monitor(model, optimizer, log_dir, policy, **monitor_kwargs) attached to a Lightning Trainer."""

    def __init__(self, log_dir=None, policy=None, **monitor_kwargs: Any):
        super().__init__()
        self.log_dir, self.policy, self.monitor_kwargs = log_dir, policy, monitor_kwargs
        self.monitor: Monitor | None = None
        self.finished: Monitor | None = None
        self._loss = None

    def on_train_start(self, trainer, pl_module) -> None:
        if self.monitor is None:
            self.monitor = Monitor(pl_module, trainer.optimizers[0], self.log_dir, self.policy,
                                   **self.monitor_kwargs)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        loss = loss.detach()
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.monitor is not None and self.monitor.optimizer is Monitor._inner(optimizer):
            loss, self._loss = self._loss, None
            self.monitor.observe(loss)

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()

    def _close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.finished, self.monitor = self.monitor, None  # a later fit() starts a new monitor

    @property
    def events(self):
        current = self.monitor or self.finished
        return current.events if current is not None else []
