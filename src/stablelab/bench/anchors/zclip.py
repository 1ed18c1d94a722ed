"""ZClip: EMA of the gradient norm's mean and variance, z-score clipping."""

from __future__ import annotations

import math

from stablelab.bench.anchors.base import AnchorRule, Decision, _bad, _number, _positive_int


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
    idealised = ("its chance hits and damage are read against the twin clipped at 1.0 (its max_grad_norm), "
                 "not against a twin under its own adaptive clip")
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
