"""LaProp: normalise the gradient by the second moment *before* the momentum.

Ziyin et al. 2020, "LaProp: Separating Momentum and Adaptivity in Adam", arXiv 2002.04839;
official code Z-T-WANG/LaProp-Optimizer, laprop.py.
"""

from __future__ import annotations

import torch

from stablelab.optim.base import StabilityOptimizer


class LaProp(StabilityOptimizer):
    """LaProp with the official defaults: lr 4e-4, betas (0.9, 0.999), eps 1e-15, decay 0.

    v <- b2 v + (1 - b2) g^2;  m <- b1 m + (1 - b1) lr * g / (sqrt(v / c2) + eps);
    p <- p - m / (c1 / lr), where c1 = EMA_{b1} of the lr (the first-moment bias correction that
    stays right under an LR schedule) and c2 = 1 - b2^t (kept as its EMA, as official). The decay
    p <- p - wd * p comes after the update and is not multiplied by the lr (official);
    `fixed_decay=False` multiplies it by the lr (AdamW's convention). Not implemented: the
    `centered` and `amsgrad` variants (off by default).
    """

    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 4e-4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-15,
                 weight_decay: float = 0.0, fixed_decay: bool = True, *, foreach: bool | None = None,
                 compiled: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      fixed_decay=fixed_decay, foreach=foreach, compiled=compiled))

    def _scalar_state(self, param):
        return {"exp_avg_lr_1": 0.0, "exp_avg_lr_2": 0.0}

    @staticmethod
    def _advanced(group: dict, state: dict) -> tuple[float, float]:
        """The lr EMAs after this step: (EMA_{b1} of lr, EMA_{b2} of 1 = 1 - b2^t)."""
        beta1, beta2 = group["betas"]
        return (state["exp_avg_lr_1"] * beta1 + (1.0 - beta1) * group["lr"],
                state["exp_avg_lr_2"] * beta2 + (1.0 - beta2))

    def _advance(self, group: dict, state: dict) -> tuple[float, float]:
        """Advance the lr EMAs; return (step size lr / c1, c2)."""
        state["exp_avg_lr_1"], state["exp_avg_lr_2"] = self._advanced(group, state)
        bias_correction1 = state["exp_avg_lr_1"] / group["lr"] if group["lr"] != 0.0 else 1.0
        return 1.0 / bias_correction1, state["exp_avg_lr_2"]

    @staticmethod
    def _decay_factor(group: dict) -> float:
        return 1.0 - group["weight_decay"] * (1.0 if group["fixed_decay"] else group["lr"])

    def _coefficients(self, group, step, states):
        if len({self._advanced(group, s) for s in states}) != 1:
            return None  # tensors that joined at different times: the foreach path handles them
        step_sizes_and_c2 = [self._advance(group, s) for s in states]
        step_size, bias_correction2 = step_sizes_and_c2[0]
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, eps=group["eps"], lr=group["lr"], step_size=step_size,
                    bias_correction2=bias_correction2, decay=self._decay_factor(group))

    @staticmethod
    def _kernel(params, grads, states, c):
        for p, g, m, v in zip(params, grads, states["exp_avg"], states["exp_avg_sq"]):
            v.copy_(c["beta2"] * v + (1 - c["beta2"]) * g * g)
            m.copy_(c["beta1"] * m + (1 - c["beta1"]) * c["lr"] * g / ((v / c["bias_correction2"]).sqrt() + c["eps"]))
            p.copy_((p - c["step_size"] * m) * c["decay"])

    def _update(self, group, param, grad, state):
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        step_size, bias_correction2 = self._advance(group, state)
        denom = exp_avg_sq.div(bias_correction2).sqrt_().add_(group["eps"])
        exp_avg.mul_(beta1).addcdiv_(grad, denom, value=(1.0 - beta1) * group["lr"])
        param.add_(exp_avg, alpha=-step_size)
        if group["weight_decay"] != 0.0:
            param.mul_(self._decay_factor(group))

    def _update_foreach(self, group, step, params, grads, states):
        beta1, beta2 = group["betas"]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        step_sizes, corrections = zip(*(self._advance(group, s) for s in states))
        denoms = torch._foreach_div(exp_avg_sqs, list(corrections))
        torch._foreach_sqrt_(denoms)
        torch._foreach_add_(denoms, group["eps"])
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_addcdiv_(exp_avgs, grads, denoms, value=(1.0 - beta1) * group["lr"])
        if len(set(step_sizes)) == 1:
            torch._foreach_add_(params, exp_avgs, alpha=-step_sizes[0])
        else:  # tensors that joined the group at different times carry different lr averages
            torch._foreach_add_(params, torch._foreach_mul(exp_avgs, [-s for s in step_sizes]))
        if group["weight_decay"] != 0.0:
            torch._foreach_mul_(params, self._decay_factor(group))
