"""AdaBelief: Adam whose second moment tracks the "belief" (g - m)^2 instead of g^2.

Zhuang et al. 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients",
arXiv 2010.07468; official code juntang-zhuang/Adabelief-Optimizer, package adabelief_pytorch 0.2.1.
"""

from __future__ import annotations

import math

import torch

from stablelab.optim.base import StabilityOptimizer, bias_correction, column, use_foreach


def rectification(beta2: float, step: int) -> float | None:
    """RAdam's variance rectification r_t, or None while rho_t < 5 (Liu et al. 2020, arXiv 1908.03265, eq. 6)."""
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    beta2_t = beta2 ** step
    rho_t = rho_inf - 2.0 * step * beta2_t / (1.0 - beta2_t)
    if rho_t < 5.0:
        return None
    return math.sqrt((1.0 - beta2_t) * (rho_t - 4.0) / (rho_inf - 4.0) * (rho_t - 2.0) / rho_t
                     * rho_inf / (rho_inf - 2.0))


def adabelief(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
              exp_avg_vars: list[torch.Tensor], *, step: int, lr: float, beta1: float, beta2: float, eps: float,
              weight_decay: float, weight_decouple: bool, fixed_decay: bool, rectify: bool,
              degenerated_to_sgd: bool, foreach: bool | None = None) -> None:
    """One AdaBelief step, in place on `params`, `exp_avgs`, `exp_avg_vars` (the functional core).

    Args:
        params, grads, exp_avgs, exp_avg_vars: lists of tensors of equal length (grads not modified).
        step: the step count t (from 1) of these tensors, this step included.
        lr, beta1, beta2, eps: as in Adam; eps also enters s every step (official).
        weight_decay: decoupled (p -= lr * wd * p, or wd * p with `fixed_decay`) when
            `weight_decouple`, else L2 added to the gradient.
        rectify: RAdam's rectification; while rho_t < 5 the step is SGD with momentum
            (`degenerated_to_sgd`) or none.
        foreach: the `_multi_tensor_adabelief` path (default: where foreach kernels exist).
    """
    if not rectify:
        step_size, adaptive = lr / bias_correction(beta1, step), True
    elif (r_t := rectification(beta2, step)) is not None:
        step_size, adaptive = lr * r_t / bias_correction(beta1, step), True
    else:  # step size 0 means no step
        step_size, adaptive = (lr / bias_correction(beta1, step) if degenerated_to_sgd else 0.0), False
    decay = 1.0 - weight_decay * (1.0 if fixed_decay else lr) if weight_decouple else 1.0
    path = _multi_tensor_adabelief if use_foreach(foreach, params) else _single_tensor_adabelief
    path(params, grads, exp_avgs, exp_avg_vars, beta1=beta1, beta2=beta2, eps=eps, decay=decay,
         l2=0.0 if weight_decouple else weight_decay, step_size=step_size, adaptive=adaptive,
         bias_correction2_sqrt=1.0 if rectify else math.sqrt(bias_correction(beta2, step)))


def _single_tensor_adabelief(params, grads, exp_avgs, exp_avg_vars, *, beta1, beta2, eps, decay, l2, step_size,
                             adaptive, bias_correction2_sqrt):
    for param, grad, exp_avg, exp_avg_var in zip(params, grads, exp_avgs, exp_avg_vars):
        if l2 != 0.0:
            grad = grad.add(param, alpha=l2)
        if decay != 1.0:
            param.mul_(decay)
        exp_avg.lerp_(grad, 1.0 - beta1)
        residual = grad - exp_avg
        exp_avg_var.mul_(beta2).addcmul_(residual, residual, value=1.0 - beta2).add_(eps)
        if not adaptive:
            if step_size > 0:
                param.add_(exp_avg, alpha=-step_size)
            continue
        denom = exp_avg_var.sqrt()
        if bias_correction2_sqrt != 1.0:
            denom.div_(bias_correction2_sqrt)
        param.addcdiv_(exp_avg, denom.add_(eps), value=-step_size)


def _multi_tensor_adabelief(params, grads, exp_avgs, exp_avg_vars, *, beta1, beta2, eps, decay, l2, step_size,
                            adaptive, bias_correction2_sqrt):
    if l2 != 0.0:
        grads = torch._foreach_add(grads, params, alpha=l2)
    if decay != 1.0:
        torch._foreach_mul_(params, decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    residuals = torch._foreach_sub(grads, exp_avgs)
    torch._foreach_mul_(exp_avg_vars, beta2)
    torch._foreach_addcmul_(exp_avg_vars, residuals, residuals, value=1.0 - beta2)
    torch._foreach_add_(exp_avg_vars, eps)
    if not adaptive:
        if step_size > 0:
            torch._foreach_add_(params, exp_avgs, alpha=-step_size)
        return
    denoms = torch._foreach_sqrt(exp_avg_vars)
    if bias_correction2_sqrt != 1.0:
        torch._foreach_div_(denoms, bias_correction2_sqrt)
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, value=-step_size)


class AdaBelief(StabilityOptimizer):
    """AdaBelief with the official 0.2.1 defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-16,
    weight_decouple True (p -= lr * wd * p before the update; `fixed_decay` drops the lr),
    rectify True (RAdam rectification; while rho_t < 5 it takes the SGD-with-momentum step
    lr * m / (1 - b1^t), `degenerated_to_sgd`).

    s <- b2 s + (1 - b2)(g - m)^2 + eps: eps enters the state every step and again outside the
    square root, as in the official code. With rectify False the step is
    lr / (1 - b1^t) * m / (sqrt(s) / sqrt(1 - b2^t) + eps). Not implemented: amsgrad (off by
    default). With weight_decouple False the decay is L2 added to the gradient (official).
    The math is the functional core `adabelief`.
    """

    state_keys = ("exp_avg", "exp_avg_var")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-16,
                 weight_decay: float = 0.0, weight_decouple: bool = True, fixed_decay: bool = False,
                 rectify: bool = True, degenerated_to_sgd: bool = True, *, foreach: bool | None = None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      weight_decouple=weight_decouple, fixed_decay=fixed_decay, rectify=rectify,
                                      degenerated_to_sgd=degenerated_to_sgd, foreach=foreach))

    def _step_tensors(self, group, step, params, grads, states, foreach):
        beta1, beta2 = group["betas"]
        adabelief(params, grads, column(states, "exp_avg"), column(states, "exp_avg_var"), step=step,
                  lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                  weight_decouple=group["weight_decouple"], fixed_decay=group["fixed_decay"],
                  rectify=group["rectify"], degenerated_to_sgd=group["degenerated_to_sgd"], foreach=foreach)
