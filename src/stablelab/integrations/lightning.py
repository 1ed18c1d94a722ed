"""stablelab's monitor as a Lightning callback.

    trainer = lightning.Trainer(callbacks=[StabilityCallback(log_dir="runs/monitor")])

Gradients are read in `on_before_optimizer_step` (after backward, before Lightning clips and the
optimizer steps, so the gradient norm is the one before clipping); the loss comes from
`on_before_backward` (summed over accumulated micro-batches, which Lightning has already scaled).
The guard's decision is honoured inside the optimizer's step. Only the first optimizer is watched.

A `stop` decision skips the step and sets `trainer.should_stop`, so `fit()` returns as it does for
EarlyStopping. The monitor's state (Monitor.state_dict) is the callback's state in Lightning's
checkpoint (`checkpoint["callbacks"]["StabilityCallback"]`): `fit(ckpt_path=...)` continues its
step numbers, detectors and incidents. Works with `lightning` or the standalone `pytorch_lightning`."""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the standalone package name
    import pytorch_lightning as pl

from stablelab.monitor import Monitor


class StabilityCallback(pl.Callback):
    """Monitor(model, optimizer, log_dir, policy, **monitor_kwargs) attached to a Lightning Trainer.

    monitor_kwargs may set on_stop="raise" to have TrainingStopped raised out of fit() instead."""

    def __init__(self, log_dir=None, policy=None, **monitor_kwargs: Any):
        super().__init__()
        self.log_dir, self.policy = log_dir, policy
        self.monitor_kwargs = {"on_stop": "flag", **monitor_kwargs}
        self.monitor: Monitor | None = None
        self.finished: Monitor | None = None
        self._restored: dict[str, Any] | None = None  # from the checkpoint, applied in on_train_start
        self._loss = None

    def on_train_start(self, trainer, pl_module) -> None:
        if self.monitor is not None:
            return
        # Lightning restores callback state (load_state_dict) before on_train_start
        restored, self._restored = self._restored, None
        start_step = None if restored else trainer.global_step
        self.monitor = Monitor(pl_module, trainer.optimizers[0], self.log_dir, self.policy,
                               start_step=start_step, **self.monitor_kwargs)
        if restored:
            self.monitor.load_state_dict(restored)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.monitor is not None:
            self.monitor.measurer.see_loss(loss)  # the task, from the graph that detaching drops
        loss = loss.detach()
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.monitor is not None and self.monitor.optimizer is Monitor._inner(optimizer):
            loss, self._loss = self._loss, None
            self.monitor.observe(loss)
            if self.monitor.stop_requested is not None:  # this step is skipped by the monitor
                trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()

    def _close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.finished, self.monitor = self.monitor, None  # a later fit() starts a new monitor

    # -- the callback's part of Lightning's checkpoint ------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        current = self.monitor or self.finished
        if current is not None:
            return current.state_dict()
        return dict(self._restored or {})  # restored but not started yet: pass it on unchanged

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) or None

    @property
    def events(self):
        current = self.monitor or self.finished
        return current.events if current is not None else []
