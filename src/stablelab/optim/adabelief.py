"""AdaBelief: Adam whose second moment tracks the "belief" (g - m)^2 instead of g^2.

Zhuang et al. 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients",
arXiv 2010.07468; official code juntang-zhuang/Adabelief-Optimizer, package adabelief_pytorch 0.2.1.
"""

from __future__ import annotations

import math

import torch

from stablelab.optim.base import StabilityOptimizer, bias_correction


def rectification(beta2: float, step: int) -> float | None:
    """RAdam's variance rectification r_t, or None while rho_t < 5 (Liu et al. 2020, arXiv 1908.03265, eq. 6)."""
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    beta2_t = beta2 ** step
    rho_t = rho_inf - 2.0 * step * beta2_t / (1.0 - beta2_t)
    if rho_t < 5.0:
        return None
    return math.sqrt((1.0 - beta2_t) * (rho_t - 4.0) / (rho_inf - 4.0) * (rho_t - 2.0) / rho_t
                     * rho_inf / (rho_inf - 2.0))


class AdaBelief(StabilityOptimizer):
    """AdaBelief with the official 0.2.1 defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-16,
    weight_decouple True (p -= lr * wd * p before the update; `fixed_decay` drops the lr),
    rectify True (RAdam rectification; while rho_t < 5 it takes the SGD-with-momentum step
    lr * m / (1 - b1^t), `degenerated_to_sgd`).

    s <- b2 s + (1 - b2)(g - m)^2 + eps: eps enters the state every step and again outside the
    square root, as in the official code. With rectify False the step is
    lr / (1 - b1^t) * m / (sqrt(s) / sqrt(1 - b2^t) + eps). Not implemented: amsgrad (off by
    default). With weight_decouple False the decay is L2 added to the gradient (official).
    """

    state_keys = ("exp_avg", "exp_avg_var")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-16,
                 weight_decay: float = 0.0, weight_decouple: bool = True, fixed_decay: bool = False,
                 rectify: bool = True, degenerated_to_sgd: bool = True, *, foreach: bool | None = None,
                 compiled: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      weight_decouple=weight_decouple, fixed_decay=fixed_decay, rectify=rectify,
                                      degenerated_to_sgd=degenerated_to_sgd, foreach=foreach, compiled=compiled))

    @staticmethod
    def _schedule(group: dict, step: int) -> tuple[float, bool]:
        """(step size, divide by sqrt(s) + eps?) for step t; step size 0 means no step."""
        beta1, beta2 = group["betas"]
        if not group["rectify"]:
            return group["lr"] / bias_correction(beta1, step), True
        r_t = rectification(beta2, step)
        if r_t is not None:
            return group["lr"] * r_t / bias_correction(beta1, step), True
        if group["degenerated_to_sgd"]:
            return group["lr"] / bias_correction(beta1, step), False
        return 0.0, False

    @staticmethod
    def _decay_factor(group: dict) -> float:
        return 1.0 - group["weight_decay"] * (1.0 if group["fixed_decay"] else group["lr"])

    def _coefficients(self, group, step, states):
        step_size, adaptive = self._schedule(group, step)
        beta1, beta2 = group["betas"]
        decoupled = group["weight_decouple"]
        return dict(beta1=beta1, beta2=beta2, eps=group["eps"], step_size=step_size, adaptive=float(adaptive),
                    decay=self._decay_factor(group) if decoupled else 1.0,
                    l2=0.0 if decoupled else group["weight_decay"],
                    bias_correction2_sqrt=1.0 if group["rectify"] else math.sqrt(bias_correction(beta2, step)))

    @staticmethod
    def _kernel(params, grads, states, c):
        for p, g, m, s in zip(params, grads, states["exp_avg"], states["exp_avg_var"]):
            g = g + c["l2"] * p
            p.mul_(c["decay"])
            m.copy_(c["beta1"] * m + (1 - c["beta1"]) * g)
            s.copy_(c["beta2"] * s + (1 - c["beta2"]) * (g - m) ** 2 + c["eps"])
            # adaptive 0: RAdam's SGD-with-momentum step while rho_t < 5
            denom = c["adaptive"] * (s.sqrt() / c["bias_correction2_sqrt"] + c["eps"]) + (1 - c["adaptive"])
            p.sub_(c["step_size"] * m / denom)

    def _update(self, group, param, grad, state):
        beta1, beta2 = group["betas"]
        step = state["step"]
        if group["weight_decay"] != 0.0:
            if group["weight_decouple"]:
                param.mul_(self._decay_factor(group))
            else:
                grad = grad.add(param, alpha=group["weight_decay"])
        exp_avg, exp_avg_var = state["exp_avg"], state["exp_avg_var"]
        exp_avg.lerp_(grad, 1.0 - beta1)
        residual = grad - exp_avg
        exp_avg_var.mul_(beta2).addcmul_(residual, residual, value=1.0 - beta2).add_(group["eps"])
        step_size, adaptive = self._schedule(group, step)
        if not adaptive:
            if step_size > 0:
                param.add_(exp_avg, alpha=-step_size)
            return
        denom = exp_avg_var.sqrt()
        if not group["rectify"]:
            denom.div_(math.sqrt(bias_correction(beta2, step)))
        param.addcdiv_(exp_avg, denom.add_(group["eps"]), value=-step_size)

    def _update_foreach(self, group, step, params, grads, states):
        beta1, beta2 = group["betas"]
        if group["weight_decay"] != 0.0:
            if group["weight_decouple"]:
                torch._foreach_mul_(params, self._decay_factor(group))
            else:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_vars = [s["exp_avg_var"] for s in states]
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        residuals = torch._foreach_sub(grads, exp_avgs)
        torch._foreach_mul_(exp_avg_vars, beta2)
        torch._foreach_addcmul_(exp_avg_vars, residuals, residuals, value=1.0 - beta2)
        torch._foreach_add_(exp_avg_vars, group["eps"])
        step_size, adaptive = self._schedule(group, step)
        if not adaptive:
            if step_size > 0:
                torch._foreach_add_(params, exp_avgs, alpha=-step_size)
            return
        denoms = torch._foreach_sqrt(exp_avg_vars)
        if not group["rectify"]:
            torch._foreach_div_(denoms, math.sqrt(bias_correction(beta2, step)))
        torch._foreach_add_(denoms, group["eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denoms, value=-step_size)
