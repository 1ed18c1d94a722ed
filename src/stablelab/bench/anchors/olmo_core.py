"""OLMo-core's spike rule: skip the step if loss or grad norm > mean + 6 sigma of the last values."""

from __future__ import annotations

import math
from collections import deque

from stablelab.bench.anchors.base import AnchorRule, Decision, _bad, _f, _number, _positive_int, _std_mean


class OlmoCoreRule(AnchorRule):
    """OLMo-core's ``SkipStepOptimizer``: skip a step whose loss or grad norm is a 6-sigma outlier.

    Official code (allenai/OLMo-core, src/olmo_core/optim/skip_step_optimizer.py, ``get_step_factor``):

    * the optimizer keeps the last ``rolling_interval_length + 1`` (129) losses and grad norms,
      *including the current one*; every value is appended, whether its step was skipped or not
      (the setters append unconditionally), so a flagged value does enter the window;
    * checks start once ``len(losses) >= max(2, rolling_interval_length // 2)``, i.e. the 64th
      value is the first one checked, against the 63 before it;
    * mean and standard deviation (``torch.std_mean``: Bessel-corrected) over the previous *finite*
      values (``masked_select(isfinite())``);
    * the step factor is 1 only if the loss and grad norm are finite and ``loss - mean <= 6 * std``
      and ``grad_norm - mean <= 6 * std``. One-sided: the current code compares the signed
      difference; an older version used ``|loss - mean| / std`` (two-sided). We follow the current one.

    Non-finite values: a NaN or inf loss/grad norm is flagged; it enters the window but not the
    statistics. A constant window (std 0) flags any value above the constant and passes the constant.

    As it runs in production (the benchmark's live run): OLMo-core's official training scripts
    clip at ``max_grad_norm=1.0`` before the optimizer step, and a flagged step is not skipped but
    multiplied by a step factor of 0 (``SkipStepAdamW``: ``exp_avg.lerp_(grad, 0)``,
    ``update.mul_(0)``). For a finite gradient that leaves weights and moments unchanged (a skip); a
    NaN or inf gradient still reaches them (0 x NaN = NaN, and clipping by a NaN norm makes every
    gradient NaN), so the live run lets a non-finite step through.

    Differences: the loss and grad-norm series are gated on their own length, and a step without a
    grad norm (``grad_norm=None``) is judged on the loss only (OLMo-core would reuse the last grad
    norm set); a step without a loss is judged on the grad norm only.
    """

    name = "olmo_core"
    action = "skip"
    production_clip = 1.0  # src/scripts/train/OLMo2-1B.py, OLMo3-7B.py: max_grad_norm=1.0
    idealised = "the rule reads the per-step mean loss (OLMo-core: the all-reduced CE loss, without z-loss)"
    # allenai/OLMo-core src/olmo_core/optim/skip_step_optimizer.py (SkipStepOptimizer.get_step_factor)
    source = "OLMo-core src/olmo_core/optim/skip_step_optimizer.py: SkipStepOptimizer (128-value window, 6 sigma)"

    def __init__(self, rolling_interval_length: int = 128, sigma_factor: float = 6.0, min_values: int | None = None):
        self.rolling_interval_length = _positive_int(self.name, "rolling_interval_length", rolling_interval_length, 2)
        self.sigma_factor = _number(self.name, "sigma_factor", sigma_factor)
        if min_values is not None:
            min_values = _positive_int(self.name, "min_values", min_values, 3)
            if min_values > rolling_interval_length + 1:
                raise _bad(self.name, f"min_values must be <= rolling_interval_length + 1 "
                                      f"({rolling_interval_length + 1}), got {min_values}")
        # OLMo-core: active when len(values incl. current) >= max(20, rolling_interval_length // 2)
        self.min_values = min_values
        self._active_at = min_values if min_values is not None else max(2, rolling_interval_length // 2)
        self._losses: deque[float] = deque(maxlen=self.rolling_interval_length)
        self._grads: deque[float] = deque(maxlen=self.rolling_interval_length)

    def _check(self, history: deque[float], value: float) -> tuple[bool, float, float]:
        """(flagged, mean, std) for ``value`` against the previous values; not flagged when inactive."""
        if len(history) + 1 < self._active_at:
            return False, math.nan, math.nan
        finite = [v for v in history if math.isfinite(v)]
        std, mean = _std_mean(finite) if finite else (math.nan, math.nan)
        ok = math.isfinite(value) and (value - mean) <= self.sigma_factor * std  # NaN -> False -> skip
        return (not ok), mean, std

    def update(self, step: int, loss: float | None, grad_norm: float | None) -> Decision:
        loss, grad_norm = _f(loss), _f(grad_norm)
        reasons = []
        if loss is not None:
            bad, mean, std = self._check(self._losses, loss)
            if bad:
                reasons.append(f"loss {loss:.6g} > mean {mean:.6g} + {self.sigma_factor:g}*std {std:.6g}")
            self._losses.append(loss)
        if grad_norm is not None:
            bad, mean, std = self._check(self._grads, grad_norm)
            if bad:
                reasons.append(f"grad norm {grad_norm:.6g} > mean {mean:.6g} + {self.sigma_factor:g}*std {std:.6g}")
            self._grads.append(grad_norm)
        if not reasons:
            return Decision(False)
        return Decision(True, None, f"step {step}: " + "; ".join(reasons))
