"""AdEMAMix: Adam plus a slow, un-bias-corrected EMA of the gradient mixed in with weight alpha.

Pagliardini et al. 2024, "The AdEMAMix Optimizer: Better, Faster, Older", arXiv 2409.03137;
official code apple/ml-ademamix, pytorch_ademamix.py.
"""

from __future__ import annotations

import math

import torch

from stablelab.optim.base import StabilityOptimizer, bias_correction, column, use_foreach


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


def ademamix(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avg_fasts: list[torch.Tensor],
             exp_avg_slows: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor], *, step: int, lr: float,
             beta1: float, beta2: float, beta3: float, alpha: float, eps: float, weight_decay: float,
             alpha_warmup_steps: int | None = None, beta3_warmup_steps: int | None = None,
             foreach: bool | None = None) -> None:
    """One AdEMAMix step, in place on `params` and the three moment lists (the functional core).

    Args:
        params, grads: lists of tensors of equal length (grads not modified).
        exp_avg_fasts, exp_avg_slows, exp_avg_sqs: m1 (beta1), m2 (beta3, not bias-corrected), v (beta2).
        step: the step count t (from 1) of these tensors, this step included.
        lr, eps: as in Adam; alpha: the weight of m2.
        weight_decay: decoupled, wd * p added to the update (official).
        alpha_warmup_steps, beta3_warmup_steps: the official warm-ups of alpha and beta3 (None: off).
        foreach: the `_multi_tensor_ademamix` path (default: where foreach kernels exist).
    """
    path = _multi_tensor_ademamix if use_foreach(foreach, params) else _single_tensor_ademamix
    path(params, grads, exp_avg_fasts, exp_avg_slows, exp_avg_sqs,
         **step_scalars(step, lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, alpha=alpha, eps=eps,
                        weight_decay=weight_decay, alpha_warmup_steps=alpha_warmup_steps,
                        beta3_warmup_steps=beta3_warmup_steps))


def step_scalars(step: int, *, lr: float, beta1: float, beta2: float, beta3: float, alpha: float, eps: float,
                 weight_decay: float, alpha_warmup_steps: int | None, beta3_warmup_steps: int | None) -> dict:
    """The scalars of step t (warmed-up beta3 and alpha, bias corrections), as the paths take them."""
    return dict(lr=lr, beta1=beta1, beta2=beta2, beta3=beta3_warmup(step, beta3, beta1, beta3_warmup_steps),
                alpha=alpha_warmup(step, alpha, alpha_warmup_steps), eps=eps, weight_decay=weight_decay,
                bias_correction1=bias_correction(beta1, step),
                bias_correction2_sqrt=math.sqrt(bias_correction(beta2, step)))


def _single_tensor_ademamix(params, grads, fasts, slows, exp_avg_sqs, *, lr, beta1, beta2, beta3, alpha, eps,
                            weight_decay, bias_correction1, bias_correction2_sqrt):
    for param, grad, fast, slow, exp_avg_sq in zip(params, grads, fasts, slows, exp_avg_sqs):
        if beta1 != 0.0:
            fast.lerp_(grad, 1.0 - beta1)
        else:
            fast.copy_(grad)
        slow.lerp_(grad, 1.0 - beta3)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps)
        update = fast.div(bias_correction1).add_(slow, alpha=alpha).div_(denom)
        if weight_decay != 0.0:
            update.add_(param, alpha=weight_decay)
        param.add_(update, alpha=-lr)


def _multi_tensor_ademamix(params, grads, fasts, slows, exp_avg_sqs, *, lr, beta1, beta2, beta3, alpha, eps,
                           weight_decay, bias_correction1, bias_correction2_sqrt):
    if beta1 != 0.0:
        torch._foreach_lerp_(fasts, grads, 1.0 - beta1)
    else:
        torch._foreach_copy_(fasts, grads)
    torch._foreach_lerp_(slows, grads, 1.0 - beta3)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, bias_correction2_sqrt)
    torch._foreach_add_(denoms, eps)
    updates = torch._foreach_div(fasts, bias_correction1)
    torch._foreach_add_(updates, slows, alpha=alpha)
    torch._foreach_div_(updates, denoms)
    if weight_decay != 0.0:
        torch._foreach_add_(updates, params, alpha=weight_decay)
    torch._foreach_add_(params, updates, alpha=-lr)


class AdEMAMix(StabilityOptimizer):
    """AdEMAMix with the official code's defaults: lr 1e-3, betas (0.9, 0.999, 0.9999), alpha 2.0
    (the paper's experiments use 5-8), eps 1e-8, no warm-ups (`alpha_warmup`/`beta3_warmup`: steps
    T_alpha = T_beta3 in the paper, set both for long runs), weight decay 0.

    m1 <- EMA_{b1}(g), m2 <- EMA_{b3}(g) (slow, not bias-corrected), v <- EMA_{b2}(g^2);
    p <- p - lr * ((m1 / (1 - b1^t) + alpha m2) / (sqrt(v) / sqrt(1 - b2^t) + eps) + wd * p),
    the decay decoupled as in the official code. Given two betas (the proxy study passes
    (beta1, beta2)), beta3 defaults to 0.9999. The math is the functional core `ademamix`.
    """

    state_keys = ("exp_avg_fast", "exp_avg_slow", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, ...] = (0.9, 0.999, 0.9999), alpha: float = 2.0,
                 eps: float = 1e-8, weight_decay: float = 0.0, alpha_warmup: int | None = None,
                 beta3_warmup: int | None = None, *, foreach: bool | None = None):
        betas = tuple(betas)
        if len(betas) == 2:
            betas = betas + (0.9999,)
        if len(betas) != 3:
            raise ValueError(f"AdEMAMix: betas must be (beta1, beta2, beta3), got {betas!r}")
        super().__init__(params, dict(lr=lr, betas=betas, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      alpha_warmup=alpha_warmup, beta3_warmup=beta3_warmup, foreach=foreach))

    def _step_tensors(self, group, step, params, grads, states, foreach):
        beta1, beta2, beta3 = group["betas"]
        ademamix(params, grads, column(states, "exp_avg_fast"), column(states, "exp_avg_slow"),
                 column(states, "exp_avg_sq"), step=step, lr=group["lr"], beta1=beta1, beta2=beta2, beta3=beta3,
                 alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
                 alpha_warmup_steps=group["alpha_warmup"], beta3_warmup_steps=group["beta3_warmup"], foreach=foreach)
