"""LaProp: normalise the gradient by the second moment *before* the momentum.

Ziyin et al. 2020, "LaProp: Separating Momentum and Adaptivity in Adam", arXiv 2002.04839;
official code Z-T-WANG/LaProp-Optimizer, laprop.py.
"""

from __future__ import annotations

import torch

from stablelab.optim.base import StabilityOptimizer, column, use_foreach


def advance_lr_averages(lr: float, beta1: float, beta2: float, lr_average1: float,
                        lr_average2: float) -> tuple[float, float]:
    """LaProp's step bookkeeping: (EMA_{b1} of the lr, EMA_{b2} of 1 = 1 - b2^t) after this step."""
    return lr_average1 * beta1 + (1.0 - beta1) * lr, lr_average2 * beta2 + (1.0 - beta2)


def laprop(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
           exp_avg_sqs: list[torch.Tensor], lr_averages1: list[float], lr_averages2: list[float], *, lr: float,
           beta1: float, beta2: float, eps: float, weight_decay: float, fixed_decay: bool,
           foreach: bool | None = None) -> None:
    """One LaProp step, in place on `params`, `exp_avgs` and `exp_avg_sqs` (the functional core).

    Args:
        params, grads, exp_avgs, exp_avg_sqs: lists of tensors of equal length (grads not modified).
        lr_averages1, lr_averages2: per tensor, this step's c1 (EMA_{b1} of the lr) and c2
            (1 - b2^t, kept as an EMA as official), from `advance_lr_averages`.
        lr, beta1, beta2, eps: the step's lr and LaProp's betas and eps.
        weight_decay: p -= wd * p after the update (official), or lr * wd * p with `fixed_decay=False`.
        foreach: the `_multi_tensor_laprop` path (default: where foreach kernels exist).
    """
    # step size lr / c1 (the first-moment bias correction that stays right under an LR schedule)
    step_sizes = [1.0 / (average / lr) if lr != 0.0 else 1.0 for average in lr_averages1]
    path = _multi_tensor_laprop if use_foreach(foreach, params) else _single_tensor_laprop
    path(params, grads, exp_avgs, exp_avg_sqs, step_sizes, list(lr_averages2), lr=lr, beta1=beta1, beta2=beta2,
         eps=eps, decay=1.0 - weight_decay * (1.0 if fixed_decay else lr))


def _single_tensor_laprop(params, grads, exp_avgs, exp_avg_sqs, step_sizes, bias_corrections2, *, lr, beta1, beta2,
                          eps, decay):
    for param, grad, exp_avg, exp_avg_sq, step_size, bias_correction2 in zip(
            params, grads, exp_avgs, exp_avg_sqs, step_sizes, bias_corrections2):
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.div(bias_correction2).sqrt_().add_(eps)
        exp_avg.mul_(beta1).addcdiv_(grad, denom, value=(1.0 - beta1) * lr)
        param.add_(exp_avg, alpha=-step_size)
        if decay != 1.0:
            param.mul_(decay)


def _multi_tensor_laprop(params, grads, exp_avgs, exp_avg_sqs, step_sizes, bias_corrections2, *, lr, beta1, beta2,
                         eps, decay):
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    denoms = torch._foreach_div(exp_avg_sqs, bias_corrections2)
    torch._foreach_sqrt_(denoms)
    torch._foreach_add_(denoms, eps)
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_addcdiv_(exp_avgs, grads, denoms, value=(1.0 - beta1) * lr)
    if len(set(step_sizes)) == 1:
        torch._foreach_add_(params, exp_avgs, alpha=-step_sizes[0])
    else:  # tensors that joined the group at different times carry different lr averages
        torch._foreach_add_(params, torch._foreach_mul(exp_avgs, [-s for s in step_sizes]))
    if decay != 1.0:
        torch._foreach_mul_(params, decay)


class LaProp(StabilityOptimizer):
    """LaProp with the official defaults: lr 4e-4, betas (0.9, 0.999), eps 1e-15, decay 0.

    v <- b2 v + (1 - b2) g^2;  m <- b1 m + (1 - b1) lr * g / (sqrt(v / c2) + eps);
    p <- p - m / (c1 / lr), where c1 = EMA_{b1} of the lr (the first-moment bias correction that
    stays right under an LR schedule) and c2 = 1 - b2^t (kept as its EMA, as official). The decay
    p <- p - wd * p comes after the update and is not multiplied by the lr (official);
    `fixed_decay=False` multiplies it by the lr (AdamW's convention). Not implemented: the
    `centered` and `amsgrad` variants (off by default). The math is the functional core `laprop`.
    """

    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 4e-4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-15,
                 weight_decay: float = 0.0, fixed_decay: bool = True, *, foreach: bool | None = None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      fixed_decay=fixed_decay, foreach=foreach))

    def _scalar_state(self, param):
        return {"exp_avg_lr_1": 0.0, "exp_avg_lr_2": 0.0}

    def _step_tensors(self, group, step, params, grads, states, foreach):
        beta1, beta2 = group["betas"]
        for state in states:  # the lr averages are per tensor, like the step count
            state["exp_avg_lr_1"], state["exp_avg_lr_2"] = advance_lr_averages(
                group["lr"], beta1, beta2, state["exp_avg_lr_1"], state["exp_avg_lr_2"])
        laprop(params, grads, column(states, "exp_avg"), column(states, "exp_avg_sq"),
               column(states, "exp_avg_lr_1"), column(states, "exp_avg_lr_2"), lr=group["lr"], beta1=beta1,
               beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"], fixed_decay=group["fixed_decay"],
               foreach=foreach)
