"""Stable-SPAM and AdEMAMix with 8-bit block-wise moments (Dettmers et al. 2022, arXiv 2110.02861).

Each is its float32 optimizer (`StableSPAM`, `AdEMAMix`: same defaults, same math, same scalar
state) whose moments are stored as in `AdamW8bit` (`stablelab.optim.state8bit`): first moments on
the signed dynamic map, second moments on the unsigned one, blocks of 256 with one float32 absmax,
float32 moments for parameters under `min_8bit_size` (4096) elements, as bitsandbytes. A step
dequantises a chunk of a tensor's moments into scratch, runs the float32 math on it, and
re-quantises. bitsandbytes has `AdEMAMix8bit` (tested against here, on CPU); it has no Stable-SPAM.

State per parameter: Stable-SPAM keeps m and v (2.03 bytes per parameter in 8 bits, 8 in float32)
plus three 0-d EMAs per tensor; AdEMAMix keeps three moments, m1 and m2 (signed) and v: 3.05
bytes per parameter in 8 bits (12 in float32). The math is the float32 cores': Stable-SPAM's
per-tensor spike clip and norm statistics (`stable_spam.clip_and_scale`) run on the whole
gradient, then the Adam update chunk by chunk; AdEMAMix's per-tensor path
(`ademamix._single_tensor_ademamix`) runs on each chunk's views.
"""

from __future__ import annotations

from typing import Any

import torch

from stablelab.optim.ademamix import AdEMAMix, _single_tensor_ademamix, ademamix, step_scalars
from stablelab.optim.base import bias_correction, column
from stablelab.optim.stable_spam import StableSPAM, clip_and_scale, reset_schedule, stable_spam
from stablelab.optim.state8bit import (Scratch, init_moments, is_8bit, maps_on, moment_chunks,
                                       state_bytes_per_parameter, zero_moments)

__all__ = ["AdEMAMix8bit", "StableSPAM8bit", "ademamix8bit", "stable_spam8bit"]

STABLE_SPAM_MOMENTS = {"exp_avg": True, "exp_avg_sq": False}  # name -> signed map
ADEMAMIX_MOMENTS = {"exp_avg_fast": True, "exp_avg_slow": True, "exp_avg_sq": False}


class _Blockwise8bit:
    """Mixin for a `StabilityOptimizer`: `moments` (name -> signed) stored 8-bit for large tensors."""

    moments: dict[str, bool] = {}

    def _check_8bit(self, block_size: int, min_8bit_size: int) -> None:
        if int(block_size) < 1:
            raise ValueError(f"{type(self).__name__}: invalid block_size {block_size!r} (must be >= 1)")
        if int(min_8bit_size) < 0:
            raise ValueError(f"{type(self).__name__}: invalid min_8bit_size {min_8bit_size!r} (must be >= 0)")

    def _init_state(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        state["step"] = 0
        init_moments(param, state, self.moments, self.defaults["block_size"], self.defaults["min_8bit_size"])
        state.update(self._scalar_state(param))

    def _scratch_on(self, device: torch.device) -> Scratch:
        cache = self.__dict__.setdefault("_scratch", {})
        if device not in cache:  # reused every step: nothing tensor-sized is allocated per step
            cache[device] = Scratch(device, len(self.moments) + 1)
        return cache[device]

    def _split(self, params, grads, states) -> tuple[list[int], list[int]]:
        small = [i for i, s in enumerate(states) if not is_8bit(s, next(iter(self.moments)))]
        large = [i for i, s in enumerate(states) if is_8bit(s, next(iter(self.moments)))]
        return small, large

    def state_bytes_per_parameter(self) -> float:
        """Bytes of state (codes, absmax, float32 moments, 0-d statistics) per parameter element with state."""
        return state_bytes_per_parameter(self.state)


def _flat(param: torch.Tensor) -> torch.Tensor:
    return param.view(-1) if param.is_contiguous() else param.reshape(-1).clone()


def stable_spam8bit(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], *, step: int, lr: float,
                    beta1: float, beta2: float, eps: float, weight_decay: float, gamma1: float, gamma2: float,
                    gamma3: float, reset_interval: int, block_size: int, scratch: Scratch) -> None:
    """One Stable-SPAM step on float32 tensors whose m and v are 8-bit (`state8bit` format), in place.

    The same math as `stable_spam` (per tensor: decoupled decay, reset, adaptive spike clip, norm
    normalisation folded into the moment updates, Adam step); `states` hold the codes, absmax and
    the 0-d `max_abs_ema`, `norm_ema`, `norm_sq_ema`."""
    reset, adam_step = reset_schedule(step, reset_interval)
    corrections = (bias_correction(gamma1, step), bias_correction(gamma2, step), bias_correction(gamma3, step))
    step_size = lr / bias_correction(beta1, adam_step)
    bias_correction2_sqrt = bias_correction(beta2, adam_step) ** 0.5
    decay = 1.0 - lr * weight_decay
    for param, grad, state in zip(params, grads, states):
        maps = maps_on(param.device)
        if reset:
            zero_moments(state, STABLE_SPAM_MOMENTS, param.device)
        grad, scale = clip_and_scale(grad, state["max_abs_ema"], state["norm_ema"], state["norm_sq_ema"],
                                     gammas=(gamma1, gamma2, gamma3), corrections=corrections, eps=eps)
        flat_param, flat_grad = _flat(param), grad.reshape(-1)
        # the moments come dequantised times (beta1, beta2): the EMA is then one add per moment
        for start, stop, (exp_avg, exp_avg_sq) in moment_chunks(state, STABLE_SPAM_MOMENTS, param.numel(),
                                                                block_size, maps, scratch, scales=(beta1, beta2)):
            chunk, g = flat_param[start:stop], flat_grad[start:stop]
            if decay != 1.0:
                chunk.mul_(decay)
            exp_avg.add_(g, alpha=(1.0 - beta1) * scale)
            exp_avg_sq.addcmul_(g, g, value=(1.0 - beta2) * scale * scale)
            # step_size * m / (sqrt(v) / sqrt(bc2) + eps), with sqrt(bc2) moved into the step size
            denom = torch.sqrt(exp_avg_sq, out=scratch.floats[-1][:stop - start])
            denom.add_(eps * bias_correction2_sqrt)
            chunk.addcdiv_(exp_avg, denom, value=-step_size * bias_correction2_sqrt)
        if not param.is_contiguous():
            param.copy_(flat_param.view(param.shape))


def ademamix8bit(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], *, step: int, lr: float,
                 beta1: float, beta2: float, beta3: float, alpha: float, eps: float, weight_decay: float,
                 alpha_warmup_steps: int | None, beta3_warmup_steps: int | None, block_size: int,
                 scratch: Scratch) -> None:
    """One AdEMAMix step on float32 tensors whose m1, m2 and v are 8-bit (`state8bit` format), in place:
    `ademamix`'s per-tensor path on each chunk's dequantised moments."""
    scalars = step_scalars(step, lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, alpha=alpha, eps=eps,
                           weight_decay=weight_decay, alpha_warmup_steps=alpha_warmup_steps,
                           beta3_warmup_steps=beta3_warmup_steps)
    for param, grad, state in zip(params, grads, states):
        flat_param, flat_grad = _flat(param), grad.reshape(-1)
        for start, stop, (fast, slow, exp_avg_sq) in moment_chunks(state, ADEMAMIX_MOMENTS, param.numel(), block_size,
                                                                   maps_on(param.device), scratch):
            _single_tensor_ademamix([flat_param[start:stop]], [flat_grad[start:stop]], [fast], [slow], [exp_avg_sq],
                                    **scalars)
        if not param.is_contiguous():
            param.copy_(flat_param.view(param.shape))


class StableSPAM8bit(_Blockwise8bit, StableSPAM):
    """`StableSPAM` with 8-bit block-wise m and v (blocks of `block_size`, one float32 absmax each).

    Same arguments and defaults as `StableSPAM`, plus `block_size` (256) and `min_8bit_size` (4096:
    smaller parameters keep float32 moments). bfloat16 parameters are stepped in float32 and
    rounded once (as `StableSPAM`). The moments are zeroed on reset steps in both formats.
    """

    moments = STABLE_SPAM_MOMENTS

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, gamma1: float = 0.7, gamma2: float = 0.9, gamma3: float = 0.999,
                 reset_interval: int = 1000, *, block_size: int = 256, min_8bit_size: int = 4096,
                 foreach: bool | None = None):
        self._check_8bit(block_size, min_8bit_size)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, gamma1=gamma1,
                         gamma2=gamma2, gamma3=gamma3, reset_interval=reset_interval, foreach=foreach)
        self.defaults.update(block_size=int(block_size), min_8bit_size=int(min_8bit_size))

    def _step_tensors(self, group, step, params, grads, states, foreach):
        small, large = self._split(params, grads, states)
        if small:
            super()._step_tensors(group, step, [params[i] for i in small], [grads[i] for i in small],
                                  [states[i] for i in small], foreach)
        if large:
            beta1, beta2 = group["betas"]
            stable_spam8bit([params[i] for i in large], [grads[i] for i in large], [states[i] for i in large],
                            step=step, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                            weight_decay=group["weight_decay"], gamma1=group["gamma1"], gamma2=group["gamma2"],
                            gamma3=group["gamma3"], reset_interval=group["reset_interval"],
                            block_size=self.defaults["block_size"], scratch=self._scratch_on(params[large[0]].device))


class AdEMAMix8bit(_Blockwise8bit, AdEMAMix):
    """`AdEMAMix` with 8-bit block-wise m1, m2 (signed map) and v (unsigned map).

    Same arguments and defaults as `AdEMAMix` (alpha 2.0, betas (0.9, 0.999, 0.9999), no decay),
    plus `block_size` (256) and `min_8bit_size` (4096). Three moments: 3 + 12 / block_size bytes
    per parameter (3.05), against 12 in float32; bitsandbytes' `AdEMAMix8bit` stores the same.
    """

    moments = ADEMAMIX_MOMENTS

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, ...] = (0.9, 0.999, 0.9999), alpha: float = 2.0,
                 eps: float = 1e-8, weight_decay: float = 0.0, alpha_warmup: int | None = None,
                 beta3_warmup: int | None = None, *, block_size: int = 256, min_8bit_size: int = 4096,
                 foreach: bool | None = None):
        self._check_8bit(block_size, min_8bit_size)
        super().__init__(params, lr=lr, betas=betas, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         alpha_warmup=alpha_warmup, beta3_warmup=beta3_warmup, foreach=foreach)
        self.defaults.update(block_size=int(block_size), min_8bit_size=int(min_8bit_size))

    def _step_tensors(self, group, step, params, grads, states, foreach):
        small, large = self._split(params, grads, states)
        beta1, beta2, beta3 = group["betas"]
        hyper = dict(step=step, lr=group["lr"], beta1=beta1, beta2=beta2, beta3=beta3, alpha=group["alpha"],
                     eps=group["eps"], weight_decay=group["weight_decay"], alpha_warmup_steps=group["alpha_warmup"],
                     beta3_warmup_steps=group["beta3_warmup"])
        if small:
            ss = [states[i] for i in small]
            ademamix([params[i] for i in small], [grads[i] for i in small], column(ss, "exp_avg_fast"),
                     column(ss, "exp_avg_slow"), column(ss, "exp_avg_sq"), foreach=foreach, **hyper)
        if large:
            ademamix8bit([params[i] for i in large], [grads[i] for i in large], [states[i] for i in large],
                         block_size=self.defaults["block_size"], scratch=self._scratch_on(params[large[0]].device),
                         **hyper)
