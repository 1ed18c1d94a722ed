"""Stable-SPAM: adaptive spike clipping, adaptive gradient-norm scaling, Adam, periodic reset.

Huang et al. 2025, "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam",
arXiv 2502.17055; official code TianjinYellow/StableSPAM, galore_torch/stablespam.py.
"""

from __future__ import annotations

import math

import torch

from stablelab.optim.base import (
    StabilityOptimizer,
    adam_moments_,
    bias_correction,
    column,
    use_foreach,
)
from stablelab.optim.transforms import adaptive_max_clip, normalize_by_norm, normalize_by_norm_scales


def stable_spam(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                exp_avg_sqs: list[torch.Tensor], max_abs_emas: list[torch.Tensor], norm_emas: list[torch.Tensor],
                norm_sq_emas: list[torch.Tensor], *, step: int, lr: float, beta1: float, beta2: float, eps: float,
                weight_decay: float, gamma1: float, gamma2: float, gamma3: float, reset_interval: int,
                foreach: bool | None = None) -> None:
    """One Stable-SPAM step, in place on `params` and the state lists (the functional core).

    Args:
        params, grads, exp_avgs, exp_avg_sqs: lists of tensors of equal length (grads not modified).
        max_abs_emas, norm_emas, norm_sq_emas: per tensor, 0-d EMAs of max|g| (gamma3), ||g||
            (gamma1) and ||g||^2 (gamma2).
        step: the step count t (from 1) of these tensors, this step included.
        lr, beta1, beta2, eps, weight_decay: Adam's, with decoupled decay p -= lr * wd * p first.
        gamma1, gamma2, gamma3: the EMA rates of the norm statistics.
        reset_interval: zero m and v every this many steps, restarting Adam's bias correction (0: never).
        foreach: the `_multi_tensor_stable_spam` path (default: where foreach kernels exist).
    """
    reset, adam_step = reset_schedule(step, reset_interval)
    path = _multi_tensor_stable_spam if use_foreach(foreach, params) else _single_tensor_stable_spam
    path(params, grads, exp_avgs, exp_avg_sqs, max_abs_emas, norm_emas, norm_sq_emas, beta1=beta1, beta2=beta2,
         eps=eps, gamma1=gamma1, gamma2=gamma2, gamma3=gamma3, reset=reset, decay=1.0 - lr * weight_decay,
         corrections=(bias_correction(gamma1, step), bias_correction(gamma2, step), bias_correction(gamma3, step)),
         step_size=lr / bias_correction(beta1, adam_step),
         bias_correction2_sqrt=math.sqrt(bias_correction(beta2, adam_step)))


def reset_schedule(step: int, reset_interval: int) -> tuple[bool, int]:
    """(zero m and v on this step?, Adam's step count for bias correction) at global step `step`."""
    if reset_interval <= 0 or step < reset_interval:
        return False, step
    return step % reset_interval == 0, step % reset_interval + 1


def clip_and_scale(grad: torch.Tensor, max_abs_ema: torch.Tensor, norm_ema: torch.Tensor, norm_sq_ema: torch.Tensor,
                   *, gammas: tuple[float, float, float], corrections: tuple[float, float, float],
                   eps: float) -> tuple[torch.Tensor, float]:
    """One tensor's adaptive spike clip and norm statistics: (clipped gradient, norm-normalisation factor).

    Updates the 0-d EMAs in place. The normalised gradient is factor * clipped (`normalize_by_norm`);
    callers fold the factor into the moment updates (one pass less)."""
    gamma1, gamma2, gamma3 = gammas
    correction1, correction2, correction3 = corrections
    max_abs = grad.abs().amax()  # 10x faster on CPU than vector_norm(ord=inf)
    max_abs_ema.lerp_(max_abs, 1.0 - gamma3)
    bound = max_abs_ema / correction3
    if max_abs > bound:  # otherwise no entry exceeds the bound and the clip is the identity
        grad = adaptive_max_clip([grad], [max_abs], [bound])[0]
    grad_norm = torch.linalg.vector_norm(grad)
    norm_ema.lerp_(grad_norm, 1.0 - gamma1)  # also for a zero gradient (official)
    norm_sq_ema.lerp_(grad_norm.square(), 1.0 - gamma2)
    scale = normalize_by_norm_scales(grad_norm, norm_ema / correction1, norm_sq_ema / correction2, eps).item()
    return grad, scale


def _single_tensor_stable_spam(params, grads, exp_avgs, exp_avg_sqs, max_abs_emas, norm_emas, norm_sq_emas, *,
                               beta1, beta2, eps, gamma1, gamma2, gamma3, reset, decay, corrections, step_size,
                               bias_correction2_sqrt):
    for param, grad, exp_avg, exp_avg_sq, max_abs_ema, norm_ema, norm_sq_ema in zip(
            params, grads, exp_avgs, exp_avg_sqs, max_abs_emas, norm_emas, norm_sq_emas):
        if decay != 1.0:
            param.mul_(decay)
        if reset:
            exp_avg.zero_()
            exp_avg_sq.zero_()
        grad, scale = clip_and_scale(grad, max_abs_ema, norm_ema, norm_sq_ema, gammas=(gamma1, gamma2, gamma3),
                                     corrections=corrections, eps=eps)
        exp_avg.mul_(beta1).add_(grad, alpha=(1.0 - beta1) * scale)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=(1.0 - beta2) * scale * scale)
        denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)


def _multi_tensor_stable_spam(params, grads, exp_avgs, exp_avg_sqs, max_abs_emas, norm_emas, norm_sq_emas, *,
                              beta1, beta2, eps, gamma1, gamma2, gamma3, reset, decay, corrections, step_size,
                              bias_correction2_sqrt):
    correction1, correction2, correction3 = corrections
    if decay != 1.0:
        torch._foreach_mul_(params, decay)
    if reset:
        torch._foreach_zero_(exp_avgs)
        torch._foreach_zero_(exp_avg_sqs)
    if grads[0].device.type == "cpu":  # torch's CPU foreach inf-norm is ~7x slower than a loop
        max_abs = torch.stack([g.abs().amax() for g in grads])
    else:
        max_abs = torch.stack(torch._foreach_norm(grads, float("inf")))
    max_abs = max_abs.to(max_abs_emas[0].dtype)
    max_abs_ema = torch.stack(max_abs_emas).lerp_(max_abs, 1.0 - gamma3)
    grads = adaptive_max_clip(grads, max_abs.unbind(), (max_abs_ema / correction3).unbind())
    grad_norms = torch.stack(torch._foreach_norm(grads)).to(max_abs.dtype)
    norm_ema = torch.stack(norm_emas).lerp_(grad_norms, 1.0 - gamma1)  # also for zero gradients (official)
    norm_sq_ema = torch.stack(norm_sq_emas).lerp_(grad_norms.square(), 1.0 - gamma2)
    torch._foreach_copy_(max_abs_emas, max_abs_ema.unbind())
    torch._foreach_copy_(norm_emas, norm_ema.unbind())
    torch._foreach_copy_(norm_sq_emas, norm_sq_ema.unbind())
    grads = normalize_by_norm(grads, grad_norms, norm_ema / correction1, norm_sq_ema / correction2, eps)
    adam_moments_(exp_avgs, exp_avg_sqs, grads, beta1, beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, bias_correction2_sqrt)
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, value=-step_size)


class StableSPAM(StabilityOptimizer):
    """Stable-SPAM: adaptive spike clipping, adaptive gradient-norm scaling, Adam, periodic reset.

    Per tensor, step t: decoupled decay p -= lr * wd * p; m_max <- EMA_{gamma3}(max|g|) and entries
    with |g| > m_max / (1 - gamma3^t) are rescaled by that bound / max|g| (`adaptive_max_clip`);
    then with EMAs of ||g|| (gamma1) and ||g||^2 (gamma2), bias-corrected,
    g <- g / ||g|| * m_norm / (sqrt(v_norm) + eps) (`normalize_by_norm`); Adam step with betas,
    eps. Every `reset_interval` steps m and v are zeroed and Adam's bias correction restarts.
    A tensor whose gradient is exactly 0 is not skipped (official): its norm EMAs take ||g|| = 0,
    the gradient stays 0 (no normalisation) and the Adam step is taken with g = 0 (the moments
    decay, the parameter still moves). pytorch-optimizer skips such a tensor. The math is the
    functional core `stable_spam`.

    Defaults are the official code's: lr 1e-3, betas (0.9, 0.999), eps 1e-8, gamma1 0.7,
    gamma2 0.9, gamma3 0.999, reset_interval 1000 (`update_proj_gap`; the paper uses 500 for
    4-bit training). Decisions on the official reset's quirks: the moments are zeroed *on* the
    reset step (the official code used the old moments for that step), and the clipping and
    norm statistics (m_max, m_norm, v_norm and their bias corrections) run on the global step
    and are not reset, so clipping stays active after a reset (pytorch-optimizer makes the same
    choices). The optional cosine decay of gamma1/beta1 (`T_max`, off by default) is not
    implemented; p.grad is never modified. Host syncs: the per-tensor path (CPU default) branches
    on tensor values per tensor, the foreach path (CUDA default) never.
    """

    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, gamma1: float = 0.7, gamma2: float = 0.9, gamma3: float = 0.999,
                 reset_interval: int = 1000, *, foreach: bool | None = None):
        for name, gamma in (("gamma1", gamma1), ("gamma2", gamma2), ("gamma3", gamma3)):
            if not 0.0 <= gamma < 1.0:
                raise ValueError(f"StableSPAM: invalid {name} {gamma!r} (must be in [0, 1))")
        if reset_interval < 0:
            raise ValueError("StableSPAM: reset_interval must be >= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      gamma1=gamma1, gamma2=gamma2, gamma3=gamma3,
                                      reset_interval=reset_interval, foreach=foreach))

    def _scalar_state(self, param):
        zero = lambda: torch.zeros((), dtype=torch.float32 if param.dtype != torch.float64 else param.dtype,
                                   device=param.device)  # noqa: E731
        return {"max_abs_ema": zero(), "norm_ema": zero(), "norm_sq_ema": zero()}

    def _step_tensors(self, group, step, params, grads, states, foreach):
        beta1, beta2 = group["betas"]
        stable_spam(params, grads, column(states, "exp_avg"), column(states, "exp_avg_sq"),
                    column(states, "max_abs_ema"), column(states, "norm_ema"), column(states, "norm_sq_ema"),
                    step=step, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                    weight_decay=group["weight_decay"], gamma1=group["gamma1"], gamma2=group["gamma2"],
                    gamma3=group["gamma3"], reset_interval=group["reset_interval"], foreach=foreach)
