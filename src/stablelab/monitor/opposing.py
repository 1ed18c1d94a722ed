"""A per-example loss signal on a fixed sampled subset, for the `opposing_signals` detector.

    tracker = OpposingSignalTracker(lambda: per_example_loss_on_all(model), n_examples=len(data))
    row.update(tracker.observe(step) or {})     # every step, or every few steps

Each call evaluates the per-example losses (through `losses_fn`, which returns one loss per example
of the whole probe set) on a fixed subset drawn once with a private generator, keeps the last
`window` readings, and once the window is full returns the keys the detector reads:
opposing_signals_correlation, opposing_signals_amplitude, opposing_signals_oscillation,
opposing_signals_group_sizes (see
`stablelab.signals.opposing_groups`). The Monitor builds one from `opposing_every` and
`opposing_batch` (`probe_losses`) and merges its keys into the rows the `opposing_signals` detector
reads; a loop of one's own can use the tracker directly."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import torch

from stablelab.signals.opposing import opposing_groups, per_example_losses


class OpposingSignalTracker:
    """Per-example losses of a fixed subset over a sliding window; see the module docstring."""

    def __init__(self, losses_fn: Callable[[], torch.Tensor], n_examples: int, subset: int = 256,
                 window: int = 10, top_k: int = 20, seed: int = 0):
        if window < 3:
            raise ValueError("window must be at least 3 readings")
        generator = torch.Generator().manual_seed(seed)
        self.index = torch.randperm(n_examples, generator=generator)[: min(subset, n_examples)].sort().values
        self.losses_fn, self.top_k = losses_fn, top_k
        self.history: deque[torch.Tensor] = deque(maxlen=window)
        self.last_groups: dict = {}

    def observe(self, step: int) -> dict | None:
        with torch.no_grad():
            losses = self.losses_fn().detach().double().reshape(-1)[self.index]
        self.history.append(losses)
        if len(self.history) < self.history.maxlen:
            return None
        groups = opposing_groups(torch.stack(list(self.history)), top_k=self.top_k)
        # Indices back into the full probe set, not the subset.
        self.last_groups = {k: self.index[v].tolist() if k.startswith("group") else v for k, v in groups.items()}
        return {"opposing_signals_correlation": groups["correlation"],
                "opposing_signals_amplitude": groups["amplitude"],
                "opposing_signals_oscillation": groups["oscillation"],
                "opposing_signals_group_sizes": [len(groups["group_a"]), len(groups["group_b"])]}


def probe_losses(model: torch.nn.Module, batch: Any, loss: str | Callable = "cross_entropy") -> Callable[[], torch.Tensor]:
    """A `losses_fn` for the tracker: one loss per example of a fixed probe batch (inputs, targets),
    or a function returning one. The forward runs without gradients and in eval mode (no dropout,
    so the training run's random stream is not consumed), then the model's mode is restored.
    loss: "cross_entropy", "mse" (`stablelab.signals.per_example_losses`) or a function
    (outputs, targets) -> one loss per example."""

    def losses() -> torch.Tensor:
        inputs, targets = batch() if callable(batch) else batch
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                outputs = model(inputs)
        finally:
            model.train(was_training)
        if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
            outputs = outputs[0]  # nanoGPT's (logits, loss)
        outputs = outputs if isinstance(outputs, torch.Tensor) else getattr(outputs, "logits", None)
        if outputs is None:
            raise TypeError("opposing_batch: the model's output has no tensor or .logits to compute losses from")
        if callable(loss):
            return loss(outputs, targets).detach().reshape(len(outputs), -1).sum(1)
        if loss == "cross_entropy" and outputs.dim() > 2:  # a sequence model: mean loss per sequence
            per_token = per_example_losses(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))
            return per_token.reshape(outputs.shape[0], -1).mean(1)
        return per_example_losses(outputs, targets, loss)

    return losses
