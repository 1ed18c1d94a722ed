"""The production trainers' hard-coded spike rules, as small pure online rule objects.

A benchmark runs them side by side on the same per-step stream (loss, grad norm) and compares
them with stablelab's monitor. Every rule is plain Python over floats (no torch), online, keeps
O(window) state, and never raises on a non-finite or missing value: what each one does with NaN/inf
is the official code's behaviour, spelled out in its docstring.

    rule = build_anchor("olmo_core")             # published defaults
    rule = build_anchor("zclip", max_grad_norm=None)
    for step, (loss, gnorm) in enumerate(stream):
        d = rule.update(step, loss, gnorm)       # Decision(flagged, clip_to, reason)

Registry names, default actions and the official code each one was checked against:

================  =======  ================================================================
name              action   official code
================  =======  ================================================================
``olmo_core``     skip     allenai/OLMo-core src/olmo_core/optim/skip_step_optimizer.py
``megatron``      None     NVIDIA/Megatron-LM megatron/core/rerun_state_machine.py
                           (``is_unexpectedly_large``), pretrain_gpt.py, param_and_grad_buffer.py
``llm_foundry``   None     mosaicml/llm-foundry llmfoundry/callbacks/kill_loss_spike_callback.py
``lightning``     stop     lightning/fabric/utilities/spike.py (lightning 2.6)
``zclip``         clip     zclip 1.0.0, zclip/zclip.py (class ZClip)
================  =======  ================================================================

Step counting: rules whose official gate depends on a batch counter (llm-foundry, Lightning) count
their own ``update`` calls that carried a loss, so the result does not depend on whether the
caller's ``step`` starts at 0 or 1; ``step`` is only used in the reasons.
"""

from __future__ import annotations

import inspect
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from stablelab.errors import UsageError

__all__ = [
    "ANCHORS",
    "AnchorRule",
    "Decision",
    "LightningSpikeRule",
    "LlmFoundryRule",
    "MegatronRule",
    "OlmoCoreRule",
    "ZClipRule",
    "build_anchor",
]


@dataclass
class Decision:
    """What a rule says about one step."""

    flagged: bool  # the rule fires at this step
    clip_to: float | None = None  # clipping rules: the grad norm to clip to (None: no clip)
    reason: str = ""


class AnchorRule:
    """Base class: one production spike rule, fed one step at a time."""

    name: ClassVar[str] = ""
    action: ClassVar[str | None] = None  # "skip", "clip", "stop" or None (log only)
    source: ClassVar[str] = ""

    def update(self, step: int, loss: float | None, grad_norm: float | None) -> Decision:
        raise NotImplementedError

    @property
    def settings(self) -> dict[str, Any]:
        """The constructor settings of this rule (for reports)."""
        return {k: getattr(self, k) for k in inspect.signature(type(self).__init__).parameters if k != "self"}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"{type(self).__name__}({args})"


def _f(x: float | None) -> float | None:
    return None if x is None else float(x)


def _bad(anchor: str, what: str) -> UsageError:
    return UsageError(f"anchor {anchor!r}: {what}")


def _positive_int(anchor: str, key: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(anchor, f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _number(anchor: str, key: str, value: Any, *, positive: bool = True, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(anchor, f"{key} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise _bad(anchor, f"{key} must be > 0, got {value!r}")
    return float(value)


def _std_mean(values: deque[float] | list[float]) -> tuple[float, float]:
    """torch.std_mean's default: Bessel-corrected (n-1) standard deviation, and the mean."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return math.nan, mean
    d2 = 0.0
    for v in values:
        d = v - mean
        d2 += d * d  # d*d, not d**2: float ** raises OverflowError on huge values
    return (d2 / (n - 1)) ** 0.5, mean


# --------------------------------------------------------------------------------------------
# OLMo-core


class OlmoCoreRule(AnchorRule):
    """OLMo-core's ``SkipStepOptimizer``: skip a step whose loss or grad norm is a 6-sigma outlier.

    Official code (allenai/OLMo-core, src/olmo_core/optim/skip_step_optimizer.py, ``get_step_factor``):

    * the optimizer keeps the last ``rolling_interval_length + 1`` (129) losses and grad norms,
      *including the current one*; every value is appended, whether its step was skipped or not
      (the setters append unconditionally), so a flagged value does enter the window;
    * checks start once ``len(losses) >= max(20, rolling_interval_length // 2)``, i.e. the 64th
      value is the first one checked, against the 63 before it;
    * mean and standard deviation (``torch.std_mean``: Bessel-corrected) over the previous values;
    * the step is skipped unless ``loss - mean <= 6 * std`` and (when grad norms are set)
      ``grad_norm - mean <= 6 * std``. One-sided: the current code compares the signed difference;
      an older version used ``|loss - mean| / std`` (two-sided). We follow the current one.

    Non-finite values follow the same comparisons: a NaN or +inf loss/grad norm fails ``<=`` and is
    flagged; -inf passes. The NaN/inf also enters the window (as in OLMo-core), which makes the mean
    NaN/inf, so every checked step is flagged until it has left the window (128 steps).
    A constant window (std 0) flags any value above the constant and passes the constant itself.

    Differences: the loss and grad-norm series are gated on their own length, and a step without a
    grad norm (``grad_norm=None``) is judged on the loss only (OLMo-core would reuse the last grad
    norm set); a step without a loss is judged on the grad norm only.
    """

    name = "olmo_core"
    action = "skip"
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
        self._active_at = min_values if min_values is not None else max(20, rolling_interval_length // 2)
        self._losses: deque[float] = deque(maxlen=self.rolling_interval_length)
        self._grads: deque[float] = deque(maxlen=self.rolling_interval_length)

    def _check(self, history: deque[float], value: float) -> tuple[bool, float, float]:
        """(flagged, mean, std) for ``value`` against the previous values; not flagged when inactive."""
        if len(history) + 1 < self._active_at:
            return False, math.nan, math.nan
        std, mean = _std_mean(history)
        ok = (value - mean) <= self.sigma_factor * std  # NaN anywhere -> False -> skip
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


# --------------------------------------------------------------------------------------------
# Megatron-LM


class MegatronRule(AnchorRule):
    """Megatron-LM's ``--check-for-spiky-loss`` and ``--check-for-large-grads``.

    Official code (NVIDIA/Megatron-LM): ``pretrain_gpt.py`` ``loss_func`` calls
    ``rerun_state_machine.validate_result(loss, is_unexpectedly_large(threshold=SPIKY_LOSS_FACTOR=10,
    context="loss"), fatal=False)``; ``megatron/core/distributed/param_and_grad_buffer.py``
    ``check_grads`` does the same for each bucket's local grad norm with ``threshold=10,
    context="grads"``. ``megatron/core/rerun_state_machine.py`` ``is_unexpectedly_large``:

    * takes ``|value|``; NaN and inf are ignored (never flagged, not counted; Megatron's separate,
      fatal ``--check-for-nan-in-loss-and-grad`` handles them, and is not part of this anchor);
    * the first ``num_samples`` (100) values only calibrate: the reference is the largest of those
      first 100 values, and it is then *frozen* (not "the largest seen so far", as sometimes said);
    * afterwards a value is flagged iff ``|value| >= 10 * max_of_first_100`` (``>=``, not ``>``).

    ``fatal=False``: a flagged step triggers the rerun machinery (or, with reruns disabled, a
    warning), never a skip/stop, so the action is log-only (None).

    Differences: Megatron checks the per-micro-batch *summed* token loss (``loss[0]``) and each
    bucket's local grad norm; we check the per-step loss and grad norm given (the same ratio when the
    token count per step is constant and there is one bucket). In ``--rerun-mode validate_results``
    Megatron does not validate (nor count) the very first iteration; we count every step, as with
    reruns disabled.
    """

    name = "megatron"
    action = None
    # NVIDIA/Megatron-LM megatron/core/rerun_state_machine.py (RerunStateMachine.is_unexpectedly_large)
    source = ("Megatron-LM --check-for-spiky-loss / --check-for-large-grads: "
              "megatron/core/rerun_state_machine.py is_unexpectedly_large (10x max of first 100)")

    def __init__(self, threshold: float = 10.0, num_samples: int = 100, check_loss: bool = True, check_grads: bool = True):
        self.threshold = _number(self.name, "threshold", threshold)
        self.num_samples = _positive_int(self.name, "num_samples", num_samples)
        for key, val in (("check_loss", check_loss), ("check_grads", check_grads)):
            if not isinstance(val, bool):
                raise _bad(self.name, f"{key} must be true or false, got {val!r}")
        self.check_loss = check_loss
        self.check_grads = check_grads
        self._counts = {"loss": 0, "grads": 0}
        self._max = {"loss": 0.0, "grads": 0.0}

    def _large(self, context: str, result: float) -> bool:
        value = math.fabs(result)
        if math.isnan(value) or math.isinf(value):
            return False
        if self._counts[context] < self.num_samples:
            self._counts[context] += 1
            self._max[context] = max(self._max[context], value)
            return False
        return value >= self._max[context] * self.threshold

    def update(self, step: int, loss: float | None, grad_norm: float | None) -> Decision:
        reasons = []
        if self.check_loss and loss is not None and self._large("loss", float(loss)):
            reasons.append(f"spiky loss {float(loss):.6g} >= {self.threshold:g} x {self._max['loss']:.6g}")
        if self.check_grads and grad_norm is not None and self._large("grads", float(grad_norm)):
            reasons.append(f"large grads {float(grad_norm):.6g} >= {self.threshold:g} x {self._max['grads']:.6g}")
        if not reasons:
            return Decision(False)
        return Decision(True, None, f"step {step}: " + "; ".join(reasons))


# --------------------------------------------------------------------------------------------
# llm-foundry


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
    values (the older callback's behaviour; pass them explicitly to model a run).
    """

    name = "llm_foundry"
    action = None
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


# --------------------------------------------------------------------------------------------
# Lightning


class LightningSpikeRule(AnchorRule):
    """Lightning's ``SpikeDetection`` (raises ``TrainingSpikeException``: stop).

    Official code (lightning/fabric/utilities/spike.py; ``lightning.pytorch.callbacks.SpikeDetection``
    wraps it), per batch ``batch_idx``:

    * no check while ``batch_idx < warmup`` (1): batch 0 only feeds the statistics;
    * reference: a running mean (torchmetrics ``Running(MeanMetric, window=10)``) of the last
      ``window`` accepted losses, and ``last_val``, the last accepted loss (0.0 at first);
    * a non-finite loss is a spike when ``finite_only`` (default True);
    * a loss that is no worse than ``last_val`` (mode "min": ``loss - last_val <= 0``; "max": ``>= 0``)
      is never a spike;
    * otherwise it is a spike iff ``|loss - mean| >= |atol|`` (skipped when atol is None) and
      ``|loss - mean| >= |rtol * mean|`` (skipped when rtol is None). With rtol=2 and mode min this
      means ``loss >= 3 * mean``. It is not ``torch.isclose`` (no combined atol + rtol*|b| bound).
    * a spike is not added to the statistics (training stops there); other losses are added,
      except, with ``finite_only=False``, non-finite ones.

    Non-finite: flagged with the default ``finite_only=True`` (after warm-up). A NaN reaching the
    statistics (only possible during warm-up) occupies a window slot but torchmetrics drops it from
    the mean; we do the same. With ``finite_only=False`` a NaN is not a spike, +inf is (mode min).

    Differences: ``batch_idx`` is the count of previous ``update`` calls with a loss (Lightning's
    batch index when called every batch from 0); Lightning computes in float32, we in float64, which
    can only matter for a loss within float32 rounding of the threshold. After a spike Lightning
    stops; we keep going (statistics unchanged), so a benchmark can read later decisions too.
    """

    name = "lightning"
    action = "stop"
    # Lightning-AI/pytorch-lightning src/lightning/fabric/utilities/spike.py (SpikeDetection._is_spike)
    source = "Lightning lightning/fabric/utilities/spike.py: SpikeDetection (window 10, rtol 2.0, warmup 1)"

    def __init__(self, mode: str = "min", window: int = 10, warmup: int = 1, atol: float | None = None,
                 rtol: float | None = 2.0, finite_only: bool = True):
        if mode not in ("min", "max"):
            raise _bad(self.name, f"mode must be 'min' or 'max', got {mode!r}")
        self.mode = mode
        self.window = _positive_int(self.name, "window", window)
        self.warmup = _positive_int(self.name, "warmup", warmup, 0)
        self.atol = _number(self.name, "atol", atol, positive=False, allow_none=True)
        self.rtol = _number(self.name, "rtol", rtol, positive=False, allow_none=True)
        if not isinstance(finite_only, bool):
            raise _bad(self.name, f"finite_only must be true or false, got {finite_only!r}")
        self.finite_only = finite_only
        self._values: deque[float] = deque(maxlen=self.window)
        self._last_val = 0.0
        self._batch_idx = 0

    def _running_mean(self) -> float:
        kept = [v for v in self._values if not math.isnan(v)]  # torchmetrics drops NaN (nan_strategy="warn")
        return sum(kept) / len(kept) if kept else math.nan

    def _is_spike(self, loss: float) -> bool:
        running = self._running_mean()
        diff = loss - self._last_val
        if self.finite_only and not math.isfinite(loss):
            return True
        if (diff <= 0.0) if self.mode == "min" else (diff >= 0.0):
            return False
        atol_ok = self.atol is None or abs(loss - running) >= abs(self.atol)
        rtol_ok = self.rtol is None or abs(loss - running) >= abs(self.rtol * running)
        return atol_ok and rtol_ok

    def update(self, step: int, loss: float | None, grad_norm: float | None) -> Decision:
        if loss is None:
            return Decision(False)
        loss = float(loss)
        idx = self._batch_idx
        self._batch_idx += 1
        running = self._running_mean()
        if idx >= self.warmup and self._is_spike(loss):
            return Decision(True, None, f"step {step}: loss {loss:.6g} vs running mean {running:.6g} "
                                        f"(rtol {self.rtol}, atol {self.atol})")
        if self.finite_only or math.isfinite(loss):
            self._values.append(loss)
            self._last_val = loss
        return Decision(False)


# --------------------------------------------------------------------------------------------
# ZClip


class ZClipRule(AnchorRule):
    """ZClip (zclip 1.0.0, ``zclip.ZClip``): z-score gradient clipping on an EMA of the grad norm.

    Reproduces ``ZClip.step`` (zclip/zclip.py) on the pre-clip total grad norm, with the same floats:

    * warm-up: the first ``warmup_steps`` (25) norms are buffered; at the 25th, mean and *population*
      variance of the buffer initialise the EMA. During warm-up the gradients are clipped to
      ``max_grad_norm`` (``clip_grad_norm_``) when it is not None;
    * afterwards: ``std = var ** 0.5``, ``z = (g - mean) / (std + eps)``; mode "zscore" with
      ``clip_option="adaptive_scaling"``: if ``z > z_thresh`` the threshold is
      ``(mean + z_thresh * std / (z / z_thresh)) * clip_factor`` ("mean": the threshold is ``mean``);
      mode "percentile": threshold ``mean + z_thresh * std`` when ``g`` exceeds it;
    * the effective clip is ``min(threshold or g, max_grad_norm)``; gradients are scaled by
      ``clip / (g + 1e-6)`` when ``g > clip`` (so the clipped norm is ``clip * g / (g + 1e-6)``);
    * the EMA is updated with the *threshold* on a spike (the clipped value, not the raw norm) and
      with ``g`` otherwise (unless ``skip_update_on_spike``): ``mean = a*mean + (1-a)*x``, then
      ``var = a*var + (1-a)*(x - new_mean)**2`` (the variance uses the already-updated mean).

    Note the package's default ``max_grad_norm=1.0``: with the defaults ZClip also clips every norm
    above 1.0 (warm-up included), not only z-score outliers. Pass ``max_grad_norm=None`` for pure
    z-score clipping.

    Decision: ``flagged`` is the z-score/percentile spike (``threshold is not None``); ``clip_to`` is
    the norm the package clips to whenever it scales the gradients (a spike, or ``g > max_grad_norm``),
    else None.

    Non-finite grad norms, as in the package (never raises): a NaN is never a spike and is not
    clipped, but it enters the buffer/EMA, after which mean/var are NaN and the rule never fires
    again; +inf after warm-up is a spike (z = inf) clipped to ``min(mean, max_grad_norm)``.
    Steps without a grad norm are ignored.
    """

    name = "zclip"
    action = "clip"
    # zclip 1.0.0 zclip/zclip.py (ZClip.step, _compute_clip_val, _update_ema)
    source = "zclip 1.0.0 zclip/zclip.py: ZClip (EMA alpha 0.97, z > 2.5, 25 warm-up steps, max_grad_norm 1.0)"

    def __init__(self, alpha: float = 0.97, z_thresh: float = 2.5, max_grad_norm: float | None = 1.0,
                 eps: float = 1e-6, warmup_steps: int = 25, mode: str = "zscore",
                 clip_option: str = "adaptive_scaling", clip_factor: float = 1.0,
                 skip_update_on_spike: bool = False):
        self.alpha = _number(self.name, "alpha", alpha)
        if not 0.0 < self.alpha < 1.0:
            raise _bad(self.name, f"alpha must be in (0, 1), got {alpha!r}")
        self.z_thresh = _number(self.name, "z_thresh", z_thresh)
        self.max_grad_norm = _number(self.name, "max_grad_norm", max_grad_norm, allow_none=True)
        self.eps = _number(self.name, "eps", eps, positive=False)
        if self.eps < 0:
            raise _bad(self.name, f"eps must be >= 0, got {eps!r}")
        self.warmup_steps = _positive_int(self.name, "warmup_steps", warmup_steps)
        mode = str(mode).lower()
        if mode not in ("zscore", "percentile"):
            raise _bad(self.name, f"mode must be 'zscore' or 'percentile', got {mode!r}")
        self.mode = mode
        clip_option = str(clip_option).lower()
        if clip_option not in ("adaptive_scaling", "mean"):
            raise _bad(self.name, f"clip_option must be 'adaptive_scaling' or 'mean', got {clip_option!r}")
        self.clip_option = clip_option
        self.clip_factor = _number(self.name, "clip_factor", clip_factor)
        if not isinstance(skip_update_on_spike, bool):
            raise _bad(self.name, f"skip_update_on_spike must be true or false, got {skip_update_on_spike!r}")
        self.skip_update_on_spike = skip_update_on_spike
        self._buffer: list[float] = []  # at most warmup_steps values
        self._mean: float | None = None
        self._var: float | None = None

    @property
    def initialized(self) -> bool:
        return self._mean is not None

    def _clip_val(self, g: float) -> float | None:
        std = self._var ** 0.5
        if self.mode == "percentile":
            threshold = self._mean + self.z_thresh * std
            return threshold if g > threshold else None
        z = (g - self._mean) / (std + self.eps) if (std + self.eps) != 0 else (
            math.copysign(math.inf, g - self._mean) if g != self._mean else math.nan)
        if z > self.z_thresh:
            if self.clip_option == "adaptive_scaling":
                eta = z / self.z_thresh
                return (self._mean + (self.z_thresh * std) / eta) * self.clip_factor
            return self._mean
        return None

    def update(self, step: int, loss: float | None, grad_norm: float | None) -> Decision:
        if grad_norm is None:
            return Decision(False)
        g = float(grad_norm)
        if not self.initialized:
            self._buffer.append(g)
            if len(self._buffer) >= self.warmup_steps:
                n = len(self._buffer)
                mean = sum(self._buffer) / n
                self._mean = mean
                self._var = sum((x - mean) * (x - mean) for x in self._buffer) / n
                self._buffer = []
            if self.max_grad_norm is not None and g > self.max_grad_norm:
                return Decision(False, self.max_grad_norm, f"step {step}: warm-up, grad norm {g:.6g} "
                                                           f"clipped to max_grad_norm {self.max_grad_norm:g}")
            return Decision(False)
        clip_val = self._clip_val(g)
        adaptive = clip_val if clip_val is not None else g
        effective = min(adaptive, self.max_grad_norm) if self.max_grad_norm is not None else adaptive
        if not (clip_val is not None and self.skip_update_on_spike):
            x = clip_val if clip_val is not None else g
            a = self.alpha
            self._mean = a * self._mean + (1 - a) * x
            d = x - self._mean
            self._var = a * self._var + (1 - a) * (d * d)
        clipped = g > effective  # the package scales the gradients only when g > effective clip
        if clip_val is not None:
            return Decision(True, effective if clipped else None,
                            f"step {step}: grad norm {g:.6g} is a z-score spike, clipped to {effective:.6g}")
        if clipped:
            return Decision(False, effective, f"step {step}: grad norm {g:.6g} clipped to max_grad_norm {effective:g}")
        return Decision(False)


# --------------------------------------------------------------------------------------------
# registry

ANCHORS: dict[str, type[AnchorRule]] = {
    cls.name: cls for cls in (OlmoCoreRule, MegatronRule, LlmFoundryRule, LightningSpikeRule, ZClipRule)
}


def build_anchor(name: str, **settings: Any) -> AnchorRule:
    """The anchor ``name`` with its published defaults, overridden by ``settings``.

    Raises UsageError (one line) on an unknown name, an unknown setting or a bad value.
    """
    cls = ANCHORS.get(name)
    if cls is None:
        raise UsageError(f"unknown anchor {name!r}; available: {', '.join(sorted(ANCHORS))}")
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(settings) - set(params))
    if unknown:
        raise UsageError(f"anchor {name!r} has no setting {', '.join(map(repr, unknown))}; "
                         f"its settings: {', '.join(params)}")
    try:
        return cls(**settings)
    except UsageError:
        raise
    except (TypeError, ValueError) as exc:  # e.g. a non-number compared in a check
        raise UsageError(f"anchor {name!r}: bad settings ({exc})") from None
