"""The every-step numbers (`FAST`) from one step's per-tensor gradient norms and its loss: the
non-finite flag, the guard's skip rule (the global gradient norm against a running typical norm),
the coherent-growth reading and the per-tensor spike ratio.

The same rule twice, for where it runs:
- `DeviceStepNumbers` keeps its state as tensors on the parameters' device and never reads a
  value back (an accelerator: the skip is decided there, with no host sync per step);
- `HostStepNumbers` does the same arithmetic in Python floats (on CPU reading 17 numbers back
  costs ~1 us, while each of the ~40 tiny tensor ops of the device path costs 3-10 us of
  dispatch: most of the monitor's per-step cost on a small CPU model).
tests/monitor/test_step_numbers.py feeds both the same sequences (spikes, NaN, inf, tensors
without gradients, no second moment) and checks that they agree."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stablelab.signals.spikes import tensor_spike_ratio

FAST = ("loss", "grad_norm", "spike_ratio_max", "spike_index", "nonfinite", "outlier", "grad_norm_typical",
        "grad_norm_ratio_min", "trusted")
EMA_BETA = 0.99        # running estimate of mean(g^2) per tensor when the optimizer keeps no v
TYPICAL_BETA = 0.9     # EMA of log ||g||: the typical gradient norm the outlier rule compares to
_TINY = 1e-30          # norms are clamped here before the log


@dataclass(frozen=True)
class TrustRule:
    """Which steps the typical norms learn from. After warm-up, a step is *suspect* when its global
    norm is above `factor` x the typical norm or every tensor's norm is above `coherent` x its own
    (the grad_spike detector's thresholds), or it is an outlier or non-finite: a suspect step does
    not enter the typical norms, so a fault lasting several steps is judged against the level
    before it on every one of its steps. After `patience` suspect steps in a row the new level is
    taken as the typical one (a lasting shift, e.g. a loss scaled up for good, is accepted instead
    of being skipped for ever)."""

    factor: float = 12.0
    coherent: float = 7.0
    patience: int = 16


class DeviceStepNumbers:
    """The rule as device tensors: about 40 small ops, no host read.

    - outlier: log ||g|| above the EMA of log ||g|| by log(outlier_factor), after `outlier_warmup`
      steps (OLMo-core skips on a running mean + 6 sigma; a ratio to the typical norm is scale-free
      and needs no variance estimate);
    - coherent ratio: min over tensors of ||g_i|| / typical_i, how much every tensor's gradient grew
      at once (a hard batch raises some layers' gradients; a gradient multiplied as a whole, by a
      loss-scale or reduction bug or a corrupted step, raises all of them);
    - spike ratio: per-tensor mean(g^2) / mean(v) (SPAM's g^2 > theta v taken per tensor), v the
      optimizer's bias-corrected second moment refreshed by `set_second_moments`
      (`signals.spikes.tensor_spike_ratio`); without one, a running EMA of mean(g^2).
    Only trusted steps enter the EMA (`TrustRule`: not non-finite, not suspect; `trusted` = 1 when
    this step's norms entered it); tensors without a gradient are left out. A NaN in the EMA marks a tensor not seen yet (NaN compares False, so an unseen
    tensor is never an outlier)."""

    def __init__(self, numels: list[int], device: torch.device, outlier_factor: float, outlier_warmup: int,
                 trust: TrustRule = TrustRule()):
        self.device, self.outlier_warmup, self.patience = device, outlier_warmup, trust.patience
        self.log_outlier = math.log(outlier_factor)
        self.log_suspect = min(math.log(trust.factor), self.log_outlier)
        self.log_coherent = math.log(trust.coherent)
        self.numels = torch.tensor([float(n) for n in numels], device=device)
        self._log_typical = torch.full((len(numels) + 1,), math.nan, device=device)
        self._typical_count = 0
        self._suspect_run = torch.zeros((), device=device)  # suspect steps in a row
        self._g2_ema = torch.zeros(len(numels), device=device)
        self._ema_count = 0
        self._v_mean: torch.Tensor | None = None
        self._false = torch.zeros((), dtype=torch.bool, device=device)
        self._one = torch.ones((), device=device)

    def set_second_moments(self, v_mean: torch.Tensor | None) -> None:
        """Per-tensor bias-corrected mean(v) (0: no history), or None without a second moment."""
        self._v_mean = v_mean

    def set_suspect_level(self, log_ratio: float) -> None:
        """The log(||g|| / typical) above which a step is suspect (the grad_spike detector's level)."""
        self.log_suspect = min(float(log_ratio), self.log_outlier)

    def reset(self) -> None:
        """Forget the spike-ratio history (after a rollback or a moment reset)."""
        self._g2_ema.zero_()
        self._ema_count = 0
        self._v_mean = None

    def step(self, norms: torch.Tensor, loss) -> torch.Tensor:
        """FAST of one step as one device vector. norms: float32 per-tensor gradient norms (0 for
        a tensor without gradient); loss: a tensor, a number or None."""
        g2 = norms * norms
        global_norm = g2.sum().sqrt()  # = ||concatenation of all gradients||
        has_loss = loss is not None
        if isinstance(loss, torch.Tensor):
            loss_t = loss.detach()
            loss_t = (loss_t.mean() if loss_t.numel() != 1 else loss_t.reshape(())).float().to(self.device)
        else:
            loss_t = torch.tensor(float(loss) if has_loss else math.nan, device=self.device)
        total = global_norm + loss_t if has_loss else global_norm
        bad = (total - total) != 0  # = ~isfinite(total) in 2 ops (inf - inf and NaN - NaN are NaN)
        ratio = self._spike_ratio(g2)
        spike_max, spike_index = ratio.max(0) if len(ratio) else (self._one, self._one * 0)
        outlier, typical, coherent, trusted = self._typical(norms, global_norm, bad)
        return torch.stack([loss_t, global_norm, spike_max, spike_index.float(), bad.float(),
                            outlier.float(), typical, coherent, trusted.float()])

    def _spike_ratio(self, g2: torch.Tensor) -> torch.Tensor:
        if self._v_mean is not None:
            return tensor_spike_ratio(g2, self.numels, self._v_mean)  # (||g||^2 / n) / mean(v)
        mean_g2 = g2 / self.numels
        if self._ema_count:
            estimate = self._g2_ema / (1 - EMA_BETA ** self._ema_count)  # bias-corrected EMA
            ratio = torch.where(estimate > 0, mean_g2 / estimate.clamp_min(1e-38), torch.ones_like(mean_g2))
        else:
            ratio = torch.ones_like(mean_g2)
        self._g2_ema = torch.where(torch.isfinite(mean_g2),
                                   EMA_BETA * self._g2_ema + (1 - EMA_BETA) * mean_g2, self._g2_ema)
        self._ema_count += 1
        return ratio

    def _typical(self, norms: torch.Tensor, global_norm: torch.Tensor, bad: torch.Tensor):
        typical_all = self._log_typical
        log_norms = torch.cat([norms, global_norm.reshape(1)]).clamp_min_(_TINY).log_()
        diff = log_norms - typical_all
        typical = torch.exp(typical_all[-1])
        if len(norms):
            lowest = diff[:-1].masked_fill(norms == 0, math.inf).nan_to_num_(nan=math.inf, posinf=math.inf)
            # no tensor to compare (all unseen or without gradient): ratio 1
            log_coherent = lowest.amin().nan_to_num_(posinf=0.0).clamp_(-60, 60)
        else:
            log_coherent = self._one * 0
        coherent = log_coherent.exp()
        if self._typical_count < self.outlier_warmup:
            outlier, accept, learn = self._false, self._false, ~bad
        else:
            suspect = ~bad & ((diff[-1] > self.log_suspect) | (log_coherent > self.log_coherent))
            run = torch.where(suspect, self._suspect_run + 1, 0.0)
            accept = run >= self.patience  # a lasting shift: the new level becomes the typical one
            self._suspect_run = torch.where(accept, 0.0, run)
            outlier = (diff[-1] > self.log_outlier) & ~bad & ~accept
            learn = ~bad & (~suspect | accept)
        updated = torch.where(typical_all.isnan() | accept, log_norms, typical_all.add(diff, alpha=1 - TYPICAL_BETA))
        self._log_typical = torch.where(learn, updated, typical_all)  # untrusted steps are left out
        self._typical_count += 1
        return outlier, typical, coherent, learn


class HostStepNumbers:
    """`DeviceStepNumbers`' rule in Python floats, for parameters on the CPU (see the module
    docstring). Same state, same order of updates; float64 arithmetic instead of float32."""

    def __init__(self, numels: list[int], device: torch.device, outlier_factor: float, outlier_warmup: int,
                 trust: TrustRule = TrustRule()):
        self.device, self.outlier_warmup, self.patience = device, outlier_warmup, trust.patience
        self.log_outlier = math.log(outlier_factor)
        self.log_suspect = min(math.log(trust.factor), self.log_outlier)
        self.log_coherent = math.log(trust.coherent)
        self.numels = [float(n) for n in numels]
        self._log_typical = [math.nan] * (len(numels) + 1)
        self._typical_count = 0
        self._suspect_run = 0.0
        self._g2_ema = [0.0] * len(numels)
        self._ema_count = 0
        self._v_mean: list[float] | None = None

    def set_second_moments(self, v_mean: torch.Tensor | None) -> None:
        self._v_mean = None if v_mean is None else v_mean.tolist()

    set_suspect_level = DeviceStepNumbers.set_suspect_level

    def reset(self) -> None:
        self._g2_ema = [0.0] * len(self.numels)
        self._ema_count = 0
        self._v_mean = None

    def step(self, norms: torch.Tensor, loss) -> list[float]:
        """FAST of one step as a list of Python floats (no tensor is made: the monitor reads it as
        is, and the window's read-back takes the list without a device transfer). norms: a tensor
        or a list of floats (a log's global norm: stablelab diagnose)."""
        values = norms if isinstance(norms, list) else norms.tolist()
        g2 = [x * x for x in values]
        global_norm = math.sqrt(sum(g2))
        has_loss = loss is not None
        if isinstance(loss, torch.Tensor):
            loss_value = loss.item() if loss.numel() == 1 else float(loss.detach().float().mean())
        else:
            loss_value = float(loss) if has_loss else math.nan
        bad = not math.isfinite(global_norm + loss_value if has_loss else global_norm)
        ratio = self._spike_ratio(g2)
        spike_max, spike_index = _max_with_index(ratio) if ratio else (1.0, 0)
        outlier, typical, coherent, trusted = self._typical(values, global_norm, bad)
        return [loss_value, global_norm, spike_max, float(spike_index), float(bad), float(outlier), typical, coherent,
                float(trusted)]

    def _spike_ratio(self, g2: list[float]) -> list[float]:
        if self._v_mean is not None:  # tensor_spike_ratio in floats: no history (v = 0) gives 1
            return [g / n / max(v, 1e-38) if v > 0 else 1.0 for g, n, v in zip(g2, self.numels, self._v_mean)]
        mean_g2 = [g / n for g, n in zip(g2, self.numels)]
        if self._ema_count:
            correction = 1 - EMA_BETA ** self._ema_count  # bias-corrected EMA
            ratio = [m / max(e / correction, 1e-38) if e > 0 else 1.0 for m, e in zip(mean_g2, self._g2_ema)]
        else:
            ratio = [1.0] * len(mean_g2)
        self._g2_ema = [EMA_BETA * e + (1 - EMA_BETA) * m if math.isfinite(m) else e
                        for e, m in zip(self._g2_ema, mean_g2)]
        self._ema_count += 1
        return ratio

    def _typical(self, norms: list[float], global_norm: float, bad: bool):
        typical_all = self._log_typical
        log_norms = [_log(x) for x in norms + [global_norm]]
        diff = [x - t for x, t in zip(log_norms, typical_all)]
        typical = math.exp(typical_all[-1])
        candidates = [d for d, x in zip(diff[:-1], norms) if x != 0 and not math.isnan(d)]
        lowest = min(candidates, default=math.inf)
        log_coherent = 0.0 if lowest == math.inf else min(max(lowest, -60.0), 60.0)
        coherent = math.exp(log_coherent)
        if self._typical_count < self.outlier_warmup:
            outlier, accept, learn = False, False, not bad
        else:
            suspect = not bad and (diff[-1] > self.log_suspect or log_coherent > self.log_coherent)
            run = self._suspect_run + 1 if suspect else 0.0
            accept = run >= self.patience  # a lasting shift: the new level becomes the typical one
            self._suspect_run = 0.0 if accept else run
            outlier = diff[-1] > self.log_outlier and not bad and not accept
            learn = not bad and (not suspect or accept)
        if learn:  # untrusted steps are left out
            self._log_typical = [x if (math.isnan(t) or accept) else t + (1 - TYPICAL_BETA) * d
                                 for x, t, d in zip(log_norms, typical_all, diff)]
        self._typical_count += 1
        return outlier, typical, coherent, learn


class GlobalNormNumbers(HostStepNumbers):
    """`HostStepNumbers`' rule for one norm, the global one (a training log has no per-tensor norms:
    stablelab diagnose): the same state and arithmetic without the lists, about 10x less work per
    step on a million-step log. tests/monitor/test_step_numbers.py checks it equals
    HostStepNumbers([1]) value for value."""

    def __init__(self, outlier_factor: float, outlier_warmup: int, trust: TrustRule = TrustRule()):
        super().__init__([1], torch.device("cpu"), outlier_factor, outlier_warmup, trust)

    def read(self, norm: float, loss: float | None) -> tuple[float, float, bool, bool]:
        """(typical norm before this step, ratio to it, outlier, trusted) of one step."""
        bad = not math.isfinite(norm + loss if loss is not None else norm)
        t = self._log_typical[-1]
        x = _log(norm)
        d = x - t
        typical = math.exp(t)
        log_coherent = 0.0 if (norm == 0 or math.isnan(d) or d == math.inf) else min(max(d, -60.0), 60.0)
        if self._typical_count < self.outlier_warmup:
            outlier, accept, learn = False, False, not bad
        else:
            suspect = not bad and (d > self.log_suspect or log_coherent > self.log_coherent)
            run = self._suspect_run + 1 if suspect else 0.0
            accept = run >= self.patience
            self._suspect_run = 0.0 if accept else run
            outlier = d > self.log_outlier and not bad and not accept
            learn = not bad and (not suspect or accept)
        if learn:
            new = x if (math.isnan(t) or accept) else t + (1 - TYPICAL_BETA) * d
            self._log_typical = [new, new]
        self._typical_count += 1
        return typical, math.exp(log_coherent), outlier, learn


def _log(x: float) -> float:
    # torch's clamp_min(1e-30).log(): NaN stays NaN, inf stays inf
    return x if math.isnan(x) else math.log(max(x, _TINY)) if x != math.inf else math.inf


def _max_with_index(values: list[float]) -> tuple[float, int]:
    """torch.max(dim=0) on a list: NaN wins (the first one), otherwise the first largest."""
    best, index = values[0], 0
    for i, x in enumerate(values):
        if math.isnan(x):
            return x, i
        if x > best:
            best, index = x, i
    return best, index


def step_numbers(numels: list[int], device: torch.device, outlier_factor: float, outlier_warmup: int,
                 where: str = "auto", trust: TrustRule = TrustRule()):
    """The implementation for `device` ("auto": Python floats on the CPU, tensors elsewhere)."""
    on_host = where == "host" or (where == "auto" and device.type == "cpu")
    cls = HostStepNumbers if on_host else DeviceStepNumbers
    return cls(numels, device, outlier_factor, outlier_warmup, trust)
