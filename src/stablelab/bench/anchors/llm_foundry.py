"""llm-foundry's KillLossSpike: loss >= 2x the running mean for consecutive steps, or a loss cap."""

from __future__ import annotations

from collections import deque

from stablelab.bench.anchors.base import AnchorRule, Decision, _number, _positive_int


class LlmFoundryRule(AnchorRule):
    """llm-foundry's ``KillLossSpike`` callback (log-only by default).

    Official code (mosaicml/llm-foundry, llmfoundry/callbacks/kill_loss_spike_callback.py,
    ``batch_end``), per batch:

    * nothing is checked until the window holds ``window_size`` (100) *previous* losses; every loss
      is appended afterwards (outliers included, so they raise the running mean);
    * loss spike: a loss is an outlier if ``loss >= outlier_multiplier (2) * mean(window)``; each
      outlier increments a counter, a non-outlier resets it to 0; the rule fires while
      ``counter > patience`` (4), i.e. on the 5th consecutive outlier and every one after it;
    * otherwise (``elif``), high losses: once ``step >= 2 * window_size`` (Composer's batch count,
      incremented before ``batch_end``, so 1-based), it fires when at least ``window_size / 2`` of the
      window's losses are ``> loss_cap`` (10).

    Non-finite losses: a NaN is not an outlier (``>=`` is False; it resets the counter) and is not
    above the cap; +inf is an outlier. Either one enters the window, after which the running mean is
    NaN/inf and no loss-spike outlier is possible until it has left the window (100 steps), as in
    the official code.

    Differences: the current llm-foundry, when ``window_size``/``loss_cap`` are left at their
    defaults, widens the window to max(100, 5% of the planned training batches) and lowers the cap
    to min(10, max of the first window). We use the given ``window_size`` and ``loss_cap`` as fixed
    values (the older callback's behaviour; pass them explicitly to model a run). In production its
    example pretraining YAMLs clip gradients at norm 1.0, which the benchmark's clipped run applies.
    """

    name = "llm_foundry"
    action = None
    # scripts/train/yamls/pretrain/mpt-125m.yaml, mpt-7b.yaml, mpt-70b.yaml:
    # algorithms.gradient_clipping {clipping_type: norm, clipping_threshold: 1.0}
    production_clip = 1.0
    idealised = "the fixed 100-step window and cap 10 of the older callback (the current one widens the window to 5% of the run)"
    # mosaicml/llm-foundry llmfoundry/callbacks/kill_loss_spike_callback.py (KillLossSpike.batch_end)
    source = ("llm-foundry llmfoundry/callbacks/kill_loss_spike_callback.py: KillLossSpike "
              "(2x 100-step mean for 5 consecutive steps, or half the window above 10)")

    def __init__(self, patience: int = 4, outlier_multiplier: float = 2.0, window_size: int = 100, loss_cap: float = 10.0):
        self.patience = _positive_int(self.name, "patience", patience, 0)
        self.outlier_multiplier = _number(self.name, "outlier_multiplier", outlier_multiplier)
        self.window_size = _positive_int(self.name, "window_size", window_size)
        self.loss_cap = _number(self.name, "loss_cap", loss_cap, positive=False)
        self._window: deque[float] = deque(maxlen=self.window_size)
        self._outliers = 0
        self._batches = 0

    def update(self, step: int, loss: float | None, grad_norm: float | None) -> Decision:
        if loss is None:
            return Decision(False)
        loss = float(loss)
        self._batches += 1
        decision = Decision(False)
        if len(self._window) == self.window_size:
            avg = sum(self._window) / self.window_size
            if loss >= avg * self.outlier_multiplier:
                self._outliers += 1
            elif self._outliers > 0:
                self._outliers = 0
            if loss >= avg * self.outlier_multiplier and self._outliers > self.patience:
                decision = Decision(True, None, f"step {step}: loss spike: {self._outliers} consecutive losses "
                                                f">= {self.outlier_multiplier:g} x running mean {avg:.6g}")
            elif self._batches >= 2 * self.window_size:
                high = sum(1 for v in self._window if v > self.loss_cap)
                if high >= self.window_size / 2:
                    decision = Decision(True, None, f"step {step}: high losses: {high}/{self.window_size} "
                                                    f"above {self.loss_cap:g}")
        self._window.append(loss)
        return decision
