"""AdamP: Adam that removes the radial component of the update for scale-invariant weights.

Heo et al. 2021, "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
Weights", ICLR 2021, arXiv 2006.08217; official code clovaai/AdamP, adamp/adamp.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from stablelab.optim.base import StabilityOptimizer, bias_correction


def radial_projection(param: torch.Tensor, grad: torch.Tensor, update: torch.Tensor, delta: float,
                      wd_ratio: float, eps: float) -> tuple[torch.Tensor, float]:
    """AdamP's projection (official `_projection`): (projected update, weight-decay ratio).

    For the per-channel view, then the whole-tensor view: if max |cos(grad, p)| over the rows is
    below delta / sqrt(row length), the weights are taken as scale-invariant and the update loses
    its component along p (row-wise): u <- u - p_hat <p_hat, u>; decay is multiplied by wd_ratio."""
    expand = [-1] + [1] * (param.dim() - 1)
    for view in (lambda x: x.reshape(x.size(0), -1), lambda x: x.reshape(1, -1)):
        cosine = F.cosine_similarity(view(grad), view(param), dim=1, eps=eps).abs_()
        if cosine.max() < delta / math.sqrt(view(param).size(1)):
            unit = param / view(param).norm(dim=1).view(expand).add_(eps)
            return update - unit * view(unit * update).sum(dim=1).view(expand), wd_ratio
    return update, 1.0


def radial_projection_no_sync(param: torch.Tensor, grad: torch.Tensor, update: torch.Tensor, delta: float,
                              wd_ratio: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`radial_projection` without a host sync: both views computed, selected with torch.where."""
    expand = [-1] + [1] * (param.dim() - 1)
    rows, flat = param.reshape(param.size(0), -1), param.reshape(1, -1)
    channel = F.cosine_similarity(grad.reshape(rows.shape), rows, dim=1, eps=eps).abs_().amax() < (
        delta / math.sqrt(rows.size(1)))
    layer = F.cosine_similarity(grad.reshape(1, -1), flat, dim=1, eps=eps).abs_().amax() < (
        delta / math.sqrt(flat.size(1)))
    norm = torch.where(channel, rows.norm(dim=1).view(expand), flat.norm().reshape([1] * param.dim()))
    unit = param / norm.add_(eps)
    radial = torch.where(channel, (unit * update).reshape(rows.shape).sum(dim=1).view(expand), (unit * update).sum())
    invariant = channel | layer
    projected = torch.where(invariant, update - unit * radial, update)
    ratio = torch.where(invariant, torch.tensor(wd_ratio, dtype=update.dtype, device=update.device),
                        torch.ones((), dtype=update.dtype, device=update.device))
    return projected, ratio


class AdamP(StabilityOptimizer):
    """AdamP with the official defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, delta 0.1,
    wd_ratio 0.1, nesterov False, decoupled decay p -= lr * wd * ratio * p (before the step,
    after the projection test, as official).

    Update u = m / (sqrt(v) / sqrt(1 - b2^t) + eps) (nesterov: (b1 m + (1 - b1) g) instead of m),
    projected by `radial_projection` for tensors with more than one dimension, then
    p -= lr / (1 - b1^t) * u. The fast path selects the projection without a host sync.
    """

    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, delta: float = 0.1, wd_ratio: float = 0.1, nesterov: bool = False,
                 *, foreach: bool | None = None):
        if not 0.0 <= wd_ratio <= 1.0:
            raise ValueError(f"AdamP: invalid wd_ratio {wd_ratio!r} (must be in [0, 1])")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, delta=delta,
                                      wd_ratio=wd_ratio, nesterov=nesterov, foreach=foreach))

    def _update(self, group, param, grad, state):
        beta1, beta2 = group["betas"]
        step = state["step"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().div_(math.sqrt(bias_correction(beta2, step))).add_(group["eps"])
        numerator = exp_avg.lerp(grad, 1.0 - beta1) if group["nesterov"] else exp_avg
        update = numerator / denom
        ratio = 1.0
        if param.dim() > 1:
            update, ratio = radial_projection(param, grad, update, group["delta"], group["wd_ratio"], group["eps"])
        if group["weight_decay"] != 0.0:
            param.mul_(1.0 - group["lr"] * group["weight_decay"] * ratio)
        param.add_(update, alpha=-group["lr"] / bias_correction(beta1, step))

    def _update_foreach(self, group, step, params, grads, states):
        beta1, beta2 = group["betas"]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, math.sqrt(bias_correction(beta2, step)))
        torch._foreach_add_(denoms, group["eps"])
        if group["nesterov"]:
            numerators = torch._foreach_lerp(exp_avgs, grads, 1.0 - beta1)
        else:
            numerators = exp_avgs
        updates = list(torch._foreach_div(numerators, denoms))
        decay = group["lr"] * group["weight_decay"]
        for i, param in enumerate(params):
            if param.dim() <= 1:
                continue
            updates[i], ratio = radial_projection_no_sync(param, grads[i], updates[i], group["delta"],
                                                          group["wd_ratio"], group["eps"])
            if decay != 0.0:
                param.mul_(1.0 - decay * ratio)
        if decay != 0.0:
            vectors = [p for p in params if p.dim() <= 1]
            if vectors:
                torch._foreach_mul_(vectors, 1.0 - decay)
        torch._foreach_add_(params, updates, alpha=-group["lr"] / bias_correction(beta1, step))
