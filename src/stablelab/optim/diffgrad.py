"""diffGrad: Adam whose momentum is damped by a friction coefficient from the gradient change.

Dubey et al. 2020, "diffGrad: An Optimization Method for Convolutional Neural Networks",
IEEE TNNLS, arXiv 1909.11015; official code shivram1987/diffGrad, diffGrad_v2.py (v1 aliases the
previous gradient with the current one, so its coefficient is always sigmoid(0) = 0.5).
"""

from __future__ import annotations

import math

import torch

from stablelab.optim.base import StabilityOptimizer, adam_moments_, bias_correction


class DiffGrad(StabilityOptimizer):
    """diffGrad with the official defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, L2 decay added
    to the gradient (coupled, as the official code; `weight_decouple=True` gives AdamW-style
    p -= lr * wd * p instead). Per step: xi = sigmoid(|g_prev - g|) (g_prev starts at 0 and stores
    the gradient after L2 decay, as official), then p -= lr sqrt(1 - b2^t) / (1 - b1^t) *
    xi * m / (sqrt(v) + eps).
    """

    state_keys = ("exp_avg", "exp_avg_sq", "previous_grad")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, weight_decouple: bool = False, *, foreach: bool | None = None,
                 compiled: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      weight_decouple=weight_decouple, foreach=foreach, compiled=compiled))

    @staticmethod
    def _step_size(group: dict, step: int) -> float:
        beta1, beta2 = group["betas"]
        return group["lr"] * math.sqrt(bias_correction(beta2, step)) / bias_correction(beta1, step)

    def _coefficients(self, group, step, states):
        beta1, beta2 = group["betas"]
        decoupled = group["weight_decouple"]
        return dict(beta1=beta1, beta2=beta2, eps=group["eps"], step_size=self._step_size(group, step),
                    decay=1.0 - group["lr"] * group["weight_decay"] if decoupled else 1.0,
                    l2=0.0 if decoupled else group["weight_decay"])

    @staticmethod
    def _kernel(params, grads, states, c):
        for p, g, m, v, prev in zip(params, grads, states["exp_avg"], states["exp_avg_sq"], states["previous_grad"]):
            g = g + c["l2"] * p
            p.mul_(c["decay"])
            m.copy_(c["beta1"] * m + (1 - c["beta1"]) * g)
            v.copy_(c["beta2"] * v + (1 - c["beta2"]) * g * g)
            friction = torch.sigmoid((prev - g).abs())
            p.sub_(c["step_size"] * friction * m / (v.sqrt() + c["eps"]))
            prev.copy_(g)

    def _update(self, group, param, grad, state):
        beta1, beta2 = group["betas"]
        if group["weight_decay"] != 0.0:
            if group["weight_decouple"]:
                param.mul_(1.0 - group["lr"] * group["weight_decay"])
            else:
                grad = grad.add(param, alpha=group["weight_decay"])
        exp_avg, exp_avg_sq, previous_grad = state["exp_avg"], state["exp_avg_sq"], state["previous_grad"]
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        # friction coefficient xi = sigmoid(|g_{t-1} - g_t|), diffGrad eq. (4); reuses the g_prev buffer
        friction = previous_grad.sub_(grad).abs_().sigmoid_().mul_(exp_avg)
        param.addcdiv_(friction, exp_avg_sq.sqrt().add_(group["eps"]), value=-self._step_size(group, state["step"]))
        previous_grad.copy_(grad)

    def _update_foreach(self, group, step, params, grads, states):
        beta1, beta2 = group["betas"]
        if group["weight_decay"] != 0.0:
            if group["weight_decouple"]:
                torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
            else:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        previous = [s["previous_grad"] for s in states]
        adam_moments_(exp_avgs, exp_avg_sqs, grads, beta1, beta2)
        torch._foreach_sub_(previous, grads)
        torch._foreach_abs_(previous)
        torch._foreach_sigmoid_(previous)
        torch._foreach_mul_(previous, exp_avgs)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denoms, group["eps"])
        torch._foreach_addcdiv_(params, previous, denoms, value=-self._step_size(group, step))
        torch._foreach_copy_(previous, grads)
