"""SPAM and Stable-SPAM: Adam with spike clipping and periodic moment resets.

SPAM: Huang et al. 2025, "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training",
arXiv 2501.06842; official code TianjinYellow/SPAM-Optimizer, galore_torch/SPAM.py.
Stable-SPAM: Huang et al. 2025, "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam",
arXiv 2502.17055; official code TianjinYellow/StableSPAM, galore_torch/stablespam.py.
"""

from __future__ import annotations

import math

import torch

from stablelab.optim.base import StabilityOptimizer, adam_denominators, adam_moments_, bias_correction
from stablelab.optim.transforms import (
    adaptive_max_clip,
    norm_normalise_scale,
    reset_warmup_scale,
    spike_clip,
    spike_clip_active,
)


class SPAM(StabilityOptimizer):
    """Spike-aware Adam with momentum reset.

    Per step t (per tensor): every `reset_interval` steps m and v are zeroed (the step count is not);
    elements with g^2 > threshold * v are clipped to sign(g) sqrt(threshold * v) (v: previous raw
    second moment), only when t >= `clip_warmup` and (t mod reset_interval) >= `clip_warmup`;
    Adam update lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), multiplied after each reset
    by a cosine ramp 0.01 -> 1 over `warmup_steps`; then decoupled decay p -= lr * wd * p.

    Defaults are the official code's: lr 1e-3, betas (0.9, 0.999), eps 1e-6, threshold 5000,
    reset_interval 500 (`update_proj_gap`), warmup_steps 150 (`warmup_epoch`), clip_warmup 20
    (`grad_accu_steps`). Differences on purpose: the step counters are per tensor (torch's
    convention; the official code counts optimizer calls: the same when every parameter gets a
    gradient each step); the optional random sparse-momentum masks (`density` < 1) are not
    implemented (dense moments, the official default); p.grad is never modified.
    """

    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, threshold: float = 5000.0, reset_interval: int = 500,
                 warmup_steps: int = 150, clip_warmup: int = 20, *, foreach: bool | None = None,
                 compiled: bool = False):
        if threshold < 0 or reset_interval < 0 or warmup_steps < 0 or clip_warmup < 0:
            raise ValueError("SPAM: threshold, reset_interval, warmup_steps and clip_warmup must be >= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      threshold=threshold, reset_interval=reset_interval,
                                      warmup_steps=warmup_steps, clip_warmup=clip_warmup, foreach=foreach,
                                      compiled=compiled))

    @staticmethod
    def _schedule(group: dict, step: int) -> tuple[bool, bool, float]:
        """(reset the moments now, clip spikes now, step size) for step t of this group."""
        beta1, beta2 = group["betas"]
        interval = group["reset_interval"]
        reset = interval > 0 and step % interval == 0
        clip = group["threshold"] > 0 and spike_clip_active(step, interval, group["clip_warmup"])
        step_size = group["lr"] * math.sqrt(bias_correction(beta2, step)) / bias_correction(beta1, step)
        step_size *= reset_warmup_scale(step, interval, group["warmup_steps"])
        return reset, clip, step_size

    def _coefficients(self, group, step, states):
        beta1, beta2 = group["betas"]
        reset, clip, step_size = self._schedule(group, step)
        return dict(beta1=beta1, beta2=beta2, eps=group["eps"], step_size=step_size, keep=0.0 if reset else 1.0,
                    clip=float(clip), threshold=group["threshold"], decay=1.0 - group["lr"] * group["weight_decay"])

    @staticmethod
    def _kernel(params, grads, states, c):
        for p, g, m, v in zip(params, grads, states["exp_avg"], states["exp_avg_sq"]):
            m.mul_(c["keep"])  # moment reset
            v.mul_(c["keep"])
            bound = (c["threshold"] * v).sqrt()
            g = torch.where(c["clip"] > 0, torch.minimum(torch.maximum(g, -bound), bound), g)
            m.copy_(c["beta1"] * m + (1 - c["beta1"]) * g)
            v.copy_(c["beta2"] * v + (1 - c["beta2"]) * g * g)
            p.copy_((p - c["step_size"] * m / (v.sqrt() + c["eps"])) * c["decay"])

    def _update(self, group, param, grad, state):
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        reset, clip, step_size = self._schedule(group, state["step"])
        if reset:
            exp_avg.zero_()
            exp_avg_sq.zero_()
        if clip:
            grad = spike_clip(grad, exp_avg_sq, group["threshold"])
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        param.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size)
        if group["weight_decay"] != 0.0:
            param.mul_(1.0 - group["lr"] * group["weight_decay"])

    def _update_foreach(self, group, step, params, grads, states):
        beta1, beta2 = group["betas"]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        reset, clip, step_size = self._schedule(group, step)
        if reset:
            torch._foreach_zero_(exp_avgs)
            torch._foreach_zero_(exp_avg_sqs)
        if clip:
            bounds = torch._foreach_mul(exp_avg_sqs, group["threshold"])
            torch._foreach_sqrt_(bounds)
            grads = torch._foreach_minimum(grads, bounds)
            torch._foreach_neg_(bounds)
            torch._foreach_maximum_(grads, bounds)
        adam_moments_(exp_avgs, exp_avg_sqs, grads, beta1, beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denoms, group["eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denoms, value=-step_size)
        if group["weight_decay"] != 0.0:
            torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])


class StableSPAM(StabilityOptimizer):
    """Stable-SPAM: adaptive spike clipping, adaptive gradient-norm scaling, Adam, periodic reset.

    Per tensor, step t: decoupled decay p -= lr * wd * p; m_max <- EMA_{gamma3}(max|g|) and entries
    with |g| > m_max / (1 - gamma3^t) are rescaled by that bound / max|g|; then with EMAs of ||g||
    (gamma1) and ||g||^2 (gamma2), bias-corrected, g <- g / ||g|| * m_norm / (sqrt(v_norm) + eps);
    Adam step with betas, eps. Every `reset_interval` steps m and v are zeroed and Adam's bias
    correction restarts. A tensor whose clipped gradient is exactly 0 is skipped (official).

    Defaults are the official code's: lr 1e-3, betas (0.9, 0.999), eps 1e-8, gamma1 0.7,
    gamma2 0.9, gamma3 0.999, reset_interval 1000 (`update_proj_gap`; the paper uses 500 for
    4-bit training). Decisions on the official reset's quirks: the moments are zeroed *on* the
    reset step (the official code used the old moments for that step), and the clipping and
    norm statistics (m_max, m_norm, v_norm and their bias corrections) run on the global step
    and are not reset, so clipping stays active after a reset (pytorch-optimizer makes the same
    choices). The optional cosine decay of gamma1/beta1 (`T_max`, off by default) is not
    implemented; p.grad is never modified. Host syncs: the per-tensor path (CPU default) branches
    on tensor values per tensor, the foreach path (CUDA default) once per step, the compiled
    path never.
    """

    state_keys = ("exp_avg", "exp_avg_sq")
    kernel_state_keys = ("exp_avg", "exp_avg_sq", "max_abs_ema", "norm_ema", "norm_sq_ema")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, gamma1: float = 0.7, gamma2: float = 0.9, gamma3: float = 0.999,
                 reset_interval: int = 1000, *, foreach: bool | None = None, compiled: bool = False):
        for name, gamma in (("gamma1", gamma1), ("gamma2", gamma2), ("gamma3", gamma3)):
            if not 0.0 <= gamma < 1.0:
                raise ValueError(f"StableSPAM: invalid {name} {gamma!r} (must be in [0, 1))")
        if reset_interval < 0:
            raise ValueError("StableSPAM: reset_interval must be >= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      gamma1=gamma1, gamma2=gamma2, gamma3=gamma3,
                                      reset_interval=reset_interval, foreach=foreach, compiled=compiled))

    def _scalar_state(self, param):
        zero = lambda: torch.zeros((), dtype=torch.float32 if param.dtype != torch.float64 else param.dtype,
                                   device=param.device)  # noqa: E731
        return {"max_abs_ema": zero(), "norm_ema": zero(), "norm_sq_ema": zero()}

    @staticmethod
    def _schedule(group: dict, step: int) -> tuple[bool, int]:
        """(reset the moments now, Adam's step count since the last reset)."""
        interval = group["reset_interval"]
        if interval <= 0 or step < interval:
            return False, step
        return step % interval == 0, step % interval + 1

    def _coefficients(self, group, step, states):
        beta1, beta2 = group["betas"]
        gamma1, gamma2, gamma3 = group["gamma1"], group["gamma2"], group["gamma3"]
        reset, adam_step = self._schedule(group, step)
        return dict(beta1=beta1, beta2=beta2, gamma1=gamma1, gamma2=gamma2, gamma3=gamma3, eps=group["eps"],
                    keep=0.0 if reset else 1.0, decay=1.0 - group["lr"] * group["weight_decay"],
                    correction1=bias_correction(gamma1, step), correction2=bias_correction(gamma2, step),
                    correction3=bias_correction(gamma3, step),
                    step_size=group["lr"] / bias_correction(beta1, adam_step),
                    bias_correction2_sqrt=math.sqrt(bias_correction(beta2, adam_step)))

    @staticmethod
    def _kernel(params, grads, states, c):
        for p, g, m, v, m_max, m_norm, v_norm in zip(
                params, grads, states["exp_avg"], states["exp_avg_sq"], states["max_abs_ema"],
                states["norm_ema"], states["norm_sq_ema"]):
            p.mul_(c["decay"])
            m.mul_(c["keep"])  # moment reset
            v.mul_(c["keep"])
            max_abs = g.abs().amax()
            m_max.copy_(c["gamma3"] * m_max + (1 - c["gamma3"]) * max_abs)
            bound = m_max / c["correction3"]
            g = torch.where(g.abs() > bound, g * (bound / max_abs), g)
            norm = torch.linalg.vector_norm(g)
            active = norm > 0  # a tensor whose clipped gradient is 0 is skipped (official)
            m_norm.copy_(torch.where(active, c["gamma1"] * m_norm + (1 - c["gamma1"]) * norm, m_norm))
            v_norm.copy_(torch.where(active, c["gamma2"] * v_norm + (1 - c["gamma2"]) * norm * norm, v_norm))
            g = g * ((m_norm / c["correction1"]) / ((v_norm / c["correction2"]).sqrt() + c["eps"])
                     / torch.where(active, norm, 1.0))
            m.copy_(torch.where(active, c["beta1"] * m + (1 - c["beta1"]) * g, m))
            v.copy_(torch.where(active, c["beta2"] * v + (1 - c["beta2"]) * g * g, v))
            update = c["step_size"] * m / (v.sqrt() / c["bias_correction2_sqrt"] + c["eps"])
            p.sub_(torch.where(active, update, 0.0))

    def _update(self, group, param, grad, state):
        beta1, beta2 = group["betas"]
        gamma1, gamma2, gamma3 = group["gamma1"], group["gamma2"], group["gamma3"]
        step = state["step"]
        if group["weight_decay"] != 0.0:
            param.mul_(1.0 - group["lr"] * group["weight_decay"])
        reset, adam_step = self._schedule(group, step)
        if reset:
            state["exp_avg"].zero_()
            state["exp_avg_sq"].zero_()

        max_abs = grad.abs().amax()  # 10x faster on CPU than vector_norm(ord=inf)
        state["max_abs_ema"].lerp_(max_abs, 1.0 - gamma3)
        bound = state["max_abs_ema"] / bias_correction(gamma3, step)
        if max_abs > bound:  # otherwise no entry exceeds the bound and the clip is the identity
            grad = adaptive_max_clip(grad, max_abs, bound)
        grad_norm = torch.linalg.vector_norm(grad)
        if grad_norm == 0:
            return
        state["norm_ema"].lerp_(grad_norm, 1.0 - gamma1)
        state["norm_sq_ema"].lerp_(grad_norm.square(), 1.0 - gamma2)
        # norm_normalise(g) = scale * g; the scale is folded into the moment updates (one pass less)
        scale = norm_normalise_scale(grad_norm, state["norm_ema"] / bias_correction(gamma1, step),
                                     state["norm_sq_ema"] / bias_correction(gamma2, step), group["eps"]).item()

        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=(1.0 - beta1) * scale)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=(1.0 - beta2) * scale * scale)
        denom = exp_avg_sq.sqrt().div_(math.sqrt(bias_correction(beta2, adam_step))).add_(group["eps"])
        param.addcdiv_(exp_avg, denom, value=-group["lr"] / bias_correction(beta1, adam_step))

    def _update_foreach(self, group, step, params, grads, states):
        beta1, beta2 = group["betas"]
        gamma1, gamma2, gamma3 = group["gamma1"], group["gamma2"], group["gamma3"]
        if group["weight_decay"] != 0.0:
            torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
        reset, adam_step = self._schedule(group, step)
        if reset:
            torch._foreach_zero_([s["exp_avg"] for s in states])
            torch._foreach_zero_([s["exp_avg_sq"] for s in states])

        if grads[0].device.type == "cpu":  # torch's CPU foreach inf-norm is ~7x slower than a loop
            max_abs = torch.stack([g.abs().amax() for g in grads])
        else:
            max_abs = torch.stack(torch._foreach_norm(grads, float("inf")))
        max_abs = max_abs.to(states[0]["max_abs_ema"].dtype)
        max_abs_ema = torch.stack([s["max_abs_ema"] for s in states]).lerp_(max_abs, 1.0 - gamma3)
        bound = max_abs_ema / bias_correction(gamma3, step)
        grads = [adaptive_max_clip(g, m, b) for g, m, b in zip(grads, max_abs.unbind(), bound.unbind())]
        grad_norms = torch.stack(torch._foreach_norm(grads)).to(max_abs.dtype)
        active = grad_norms != 0
        norm_ema = torch.stack([s["norm_ema"] for s in states])
        norm_sq_ema = torch.stack([s["norm_sq_ema"] for s in states])
        # a tensor whose clipped gradient is 0 is skipped entirely (official); other rows update
        norm_ema = torch.where(active, norm_ema.lerp(grad_norms, 1.0 - gamma1), norm_ema)
        norm_sq_ema = torch.where(active, norm_sq_ema.lerp(grad_norms.square(), 1.0 - gamma2), norm_sq_ema)
        for s, m_max, m_norm, v_norm in zip(states, max_abs_ema.unbind(), norm_ema.unbind(), norm_sq_ema.unbind()):
            s["max_abs_ema"].copy_(m_max)
            s["norm_ema"].copy_(m_norm)
            s["norm_sq_ema"].copy_(v_norm)
        scales = norm_normalise_scale(grad_norms, norm_ema / bias_correction(gamma1, step),
                                      norm_sq_ema / bias_correction(gamma2, step), group["eps"])
        if not bool(active.all()):  # a host sync per step (cheap on CPU); drop the skipped tensors
            keep = active.tolist()
            params, grads, states = ([x for x, k in zip(xs, keep) if k] for xs in (params, grads, states))
            scales = scales[active]
            if not params:
                return
        grads = torch._foreach_mul(grads, [s.to(g.dtype) for s, g in zip(scales.unbind(), grads)])

        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        adam_moments_(exp_avgs, exp_avg_sqs, grads, beta1, beta2)
        denoms = adam_denominators(exp_avg_sqs, beta2, adam_step, group["eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denoms, value=-group["lr"] / bias_correction(beta1, adam_step))
