"""diffGrad: Adam whose momentum is damped by a friction coefficient from the gradient change.

Dubey et al. 2020, "diffGrad: An Optimization Method for Convolutional Neural Networks",
IEEE TNNLS, arXiv 1909.11015; official code shivram1987/diffGrad, diffGrad_v2.py (v1 aliases the
previous gradient with the current one, so its coefficient is always sigmoid(0) = 0.5).
"""

from __future__ import annotations

import math

import torch

from stablelab.optim.base import StabilityOptimizer, adam_moments_, bias_correction, column, use_foreach


def diffgrad(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
             exp_avg_sqs: list[torch.Tensor], previous_grads: list[torch.Tensor], *, step: int, lr: float,
             beta1: float, beta2: float, eps: float, weight_decay: float, weight_decouple: bool,
             foreach: bool | None = None) -> None:
    """One diffGrad step, in place on `params` and the state lists (the functional core).

    Args:
        params, grads, exp_avgs, exp_avg_sqs: lists of tensors of equal length (grads not modified).
        previous_grads: the previous step's gradients (after L2 decay; zeros at first), overwritten.
        step: the step count t (from 1) of these tensors, this step included.
        lr, beta1, beta2, eps: as in Adam.
        weight_decay: L2 added to the gradient (official), or decoupled p -= lr * wd * p when
            `weight_decouple`.
        foreach: the `_multi_tensor_diffgrad` path (default: where foreach kernels exist).
    """
    path = _multi_tensor_diffgrad if use_foreach(foreach, params) else _single_tensor_diffgrad
    path(params, grads, exp_avgs, exp_avg_sqs, previous_grads, beta1=beta1, beta2=beta2, eps=eps,
         decay=1.0 - lr * weight_decay if weight_decouple else 1.0, l2=0.0 if weight_decouple else weight_decay,
         step_size=lr * math.sqrt(bias_correction(beta2, step)) / bias_correction(beta1, step))


def _single_tensor_diffgrad(params, grads, exp_avgs, exp_avg_sqs, previous_grads, *, beta1, beta2, eps, decay, l2,
                            step_size):
    for param, grad, exp_avg, exp_avg_sq, previous_grad in zip(params, grads, exp_avgs, exp_avg_sqs, previous_grads):
        if l2 != 0.0:
            grad = grad.add(param, alpha=l2)
        if decay != 1.0:
            param.mul_(decay)
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        # friction coefficient xi = sigmoid(|g_{t-1} - g_t|), diffGrad eq. (4); reuses the g_prev buffer
        friction = previous_grad.sub_(grad).abs_().sigmoid_().mul_(exp_avg)
        param.addcdiv_(friction, exp_avg_sq.sqrt().add_(eps), value=-step_size)
        previous_grad.copy_(grad)


def _multi_tensor_diffgrad(params, grads, exp_avgs, exp_avg_sqs, previous_grads, *, beta1, beta2, eps, decay, l2,
                           step_size):
    if l2 != 0.0:
        grads = torch._foreach_add(grads, params, alpha=l2)
    if decay != 1.0:
        torch._foreach_mul_(params, decay)
    adam_moments_(exp_avgs, exp_avg_sqs, grads, beta1, beta2)
    torch._foreach_sub_(previous_grads, grads)
    torch._foreach_abs_(previous_grads)
    torch._foreach_sigmoid_(previous_grads)
    torch._foreach_mul_(previous_grads, exp_avgs)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, previous_grads, denoms, value=-step_size)
    torch._foreach_copy_(previous_grads, grads)


class DiffGrad(StabilityOptimizer):
    """diffGrad with the official defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, L2 decay added
    to the gradient (coupled, as the official code; `weight_decouple=True` gives AdamW-style
    p -= lr * wd * p instead). Per step: xi = sigmoid(|g_prev - g|) (g_prev starts at 0 and stores
    the gradient after L2 decay, as official), then p -= lr sqrt(1 - b2^t) / (1 - b1^t) *
    xi * m / (sqrt(v) + eps). The math is the functional core `diffgrad`.
    """

    state_keys = ("exp_avg", "exp_avg_sq", "previous_grad")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, weight_decouple: bool = False, *, foreach: bool | None = None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      weight_decouple=weight_decouple, foreach=foreach))

    def _step_tensors(self, group, step, params, grads, states, foreach):
        beta1, beta2 = group["betas"]
        diffgrad(params, grads, column(states, "exp_avg"), column(states, "exp_avg_sq"),
                 column(states, "previous_grad"), step=step, lr=group["lr"], beta1=beta1, beta2=beta2,
                 eps=group["eps"], weight_decay=group["weight_decay"], weight_decouple=group["weight_decouple"],
                 foreach=foreach)
