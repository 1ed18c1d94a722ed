"""AdEMAMix: Adam plus a slow, un-bias-corrected EMA of the gradient mixed in with weight alpha.

Pagliardini et al. 2024, "The AdEMAMix Optimizer: Better, Faster, Older", arXiv 2409.03137;
official code apple/ml-ademamix, pytorch_ademamix.py.
"""

from __future__ import annotations

import math

import torch

from stablelab.optim.base import StabilityOptimizer, adam_denominators, bias_correction


def alpha_warmup(step: int, alpha: float, warmup: int | None) -> float:
    """Linear warm-up of alpha from 0 (official `linear_warmup_scheduler`)."""
    if warmup is None or step >= warmup:
        return alpha
    return step / float(warmup) * alpha


def beta3_warmup(step: int, beta3: float, beta1: float, warmup: int | None) -> float:
    """Warm-up of beta3 from beta1, linear in half-life space (official `linear_hl_warmup_scheduler`).

    Half-life f(b) = log(0.5) / log(b + 1e-8) - 1 interpolates linearly; f^-1(t) = 0.5^(1 / (t + 1))."""
    if warmup is None or step >= warmup:
        return beta3
    half_life = lambda beta: math.log(0.5) / math.log(beta + 1e-8) - 1.0  # noqa: E731
    a = step / float(warmup)
    return math.pow(0.5, 1.0 / ((1.0 - a) * half_life(beta1) + a * half_life(beta3) + 1.0))


class AdEMAMix(StabilityOptimizer):
    """AdEMAMix with the official code's defaults: lr 1e-3, betas (0.9, 0.999, 0.9999), alpha 2.0
    (the paper's experiments use 5-8), eps 1e-8, no warm-ups (`alpha_warmup`/`beta3_warmup`: steps
    T_alpha = T_beta3 in the paper, set both for long runs), weight decay 0.

    m1 <- EMA_{b1}(g), m2 <- EMA_{b3}(g) (slow, not bias-corrected), v <- EMA_{b2}(g^2);
    p <- p - lr * ((m1 / (1 - b1^t) + alpha m2) / (sqrt(v) / sqrt(1 - b2^t) + eps) + wd * p),
    the decay decoupled as in the official code. Given two betas (the proxy study passes
    (beta1, beta2)), beta3 defaults to 0.9999.
    """

    state_keys = ("exp_avg_fast", "exp_avg_slow", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, ...] = (0.9, 0.999, 0.9999), alpha: float = 2.0,
                 eps: float = 1e-8, weight_decay: float = 0.0, alpha_warmup: int | None = None,
                 beta3_warmup: int | None = None, *, foreach: bool | None = None,
                 compiled: bool = False):
        betas = tuple(betas)
        if len(betas) == 2:
            betas = betas + (0.9999,)
        if len(betas) != 3:
            raise ValueError(f"AdEMAMix: betas must be (beta1, beta2, beta3), got {betas!r}")
        super().__init__(params, dict(lr=lr, betas=betas, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      alpha_warmup=alpha_warmup, beta3_warmup=beta3_warmup, foreach=foreach,
                                      compiled=compiled))

    @staticmethod
    def _schedule(group: dict, step: int) -> tuple[float, float]:
        beta1, _, beta3 = group["betas"]
        return (alpha_warmup(step, group["alpha"], group["alpha_warmup"]),
                beta3_warmup(step, beta3, beta1, group["beta3_warmup"]))

    def _coefficients(self, group, step, states):
        beta1, beta2, _ = group["betas"]
        alpha, beta3 = self._schedule(group, step)
        return dict(beta1=beta1, beta2=beta2, beta3=beta3, alpha=alpha, eps=group["eps"], lr=group["lr"],
                    weight_decay=group["weight_decay"], bias_correction1=bias_correction(beta1, step),
                    bias_correction2_sqrt=math.sqrt(bias_correction(beta2, step)))

    @staticmethod
    def _kernel(params, grads, states, c):
        for p, g, fast, slow, v in zip(params, grads, states["exp_avg_fast"], states["exp_avg_slow"],
                                        states["exp_avg_sq"]):
            fast.copy_(c["beta1"] * fast + (1 - c["beta1"]) * g)
            slow.copy_(c["beta3"] * slow + (1 - c["beta3"]) * g)
            v.copy_(c["beta2"] * v + (1 - c["beta2"]) * g * g)
            denom = v.sqrt() / c["bias_correction2_sqrt"] + c["eps"]
            update = (fast / c["bias_correction1"] + c["alpha"] * slow) / denom
            p.sub_(c["lr"] * (update + c["weight_decay"] * p))

    def _update(self, group, param, grad, state):
        beta1, beta2, _ = group["betas"]
        step = state["step"]
        alpha, beta3 = self._schedule(group, step)
        fast, slow, exp_avg_sq = state["exp_avg_fast"], state["exp_avg_slow"], state["exp_avg_sq"]
        if beta1 != 0.0:
            fast.lerp_(grad, 1.0 - beta1)
        else:
            fast.copy_(grad)
        slow.lerp_(grad, 1.0 - beta3)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().div_(math.sqrt(bias_correction(beta2, step))).add_(group["eps"])
        update = fast.div(bias_correction(beta1, step)).add_(slow, alpha=alpha).div_(denom)
        if group["weight_decay"] != 0.0:
            update.add_(param, alpha=group["weight_decay"])
        param.add_(update, alpha=-group["lr"])

    def _update_foreach(self, group, step, params, grads, states):
        beta1, beta2, _ = group["betas"]
        alpha, beta3 = self._schedule(group, step)
        fasts = [s["exp_avg_fast"] for s in states]
        slows = [s["exp_avg_slow"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        if beta1 != 0.0:
            torch._foreach_lerp_(fasts, grads, 1.0 - beta1)
        else:
            torch._foreach_copy_(fasts, grads)
        torch._foreach_lerp_(slows, grads, 1.0 - beta3)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        denoms = adam_denominators(exp_avg_sqs, beta2, step, group["eps"])
        updates = torch._foreach_div(fasts, bias_correction(beta1, step))
        torch._foreach_add_(updates, slows, alpha=alpha)
        torch._foreach_div_(updates, denoms)
        if group["weight_decay"] != 0.0:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])
        torch._foreach_add_(params, updates, alpha=-group["lr"])
