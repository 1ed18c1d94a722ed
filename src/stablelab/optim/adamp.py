"""AdamP: Adam that removes the radial component of the update for scale-invariant weights.

Heo et al. 2021, "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
Weights", ICLR 2021, arXiv 2006.08217; official code clovaai/AdamP, adamp/adamp.py.
"""

from __future__ import annotations

import math

import torch

from stablelab.optim.base import StabilityOptimizer, adam_denominators, adam_moments_, bias_correction


def _cosines(param: torch.Tensor, grad: torch.Tensor, eps: float):
    """|cos(grad, p)| per row (channel view) and for the whole tensor (layer view), in one pass.

    Cosine as torch.nn.functional.cosine_similarity (the official code's): x.y / (max(|x|, eps)
    max(|y|, eps)); the three row reductions serve both views."""
    rows_p, rows_g = param.reshape(param.size(0), -1), grad.reshape(param.size(0), -1)
    dots = torch.linalg.vecdot(rows_g, rows_p)
    p_sq, g_sq = rows_p.square().sum(dim=1), rows_g.square().sum(dim=1)
    p_norms = p_sq.sqrt()
    channel = dots.abs() / (g_sq.sqrt().clamp_min(eps) * p_norms.clamp_min(eps))
    layer = dots.sum().abs() / (g_sq.sum().sqrt().clamp_min(eps) * p_sq.sum().sqrt().clamp_min(eps))
    return channel, layer, p_norms, p_sq.sum().sqrt()


def radial_projection(param: torch.Tensor, grad: torch.Tensor, update: torch.Tensor, delta: float,
                      wd_ratio: float, eps: float) -> tuple[torch.Tensor, float]:
    """AdamP's projection (official `_projection`): (projected update, weight-decay ratio).

    For the per-channel view, then the whole-tensor view: if max |cos(grad, p)| over the rows is
    below delta / sqrt(row length), the weights are taken as scale-invariant and the update loses
    its component along p (row-wise): u <- u - p_hat <p_hat, u>; decay is multiplied by wd_ratio."""
    channel, layer, row_norms, norm = _cosines(param, grad, eps)
    rows = param.size(0)
    if channel.max() < delta / math.sqrt(param.numel() // rows):
        unit = param.reshape(rows, -1) / (row_norms + eps).unsqueeze(1)
        rows_u = update.reshape(rows, -1)
        return (rows_u - unit * torch.linalg.vecdot(unit, rows_u).unsqueeze(1)).view_as(update), wd_ratio
    if layer < delta / math.sqrt(param.numel()):
        unit = param / (norm + eps)
        return update - unit * torch.linalg.vecdot(unit.flatten(), update.flatten()), wd_ratio
    return update, 1.0


def radial_projection_no_sync(param: torch.Tensor, grad: torch.Tensor, update: torch.Tensor, delta: float,
                              wd_ratio: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`radial_projection` without a host sync: both views computed, selected with torch.where."""
    channel, layer, row_norms, norm = _cosines(param, grad, eps)
    rows = param.size(0)
    channel = channel.amax() < delta / math.sqrt(param.numel() // rows)
    layer = layer < delta / math.sqrt(param.numel())
    norms = torch.where(channel, row_norms, norm.expand_as(row_norms)).add_(eps).unsqueeze(1)
    unit = param.reshape(rows, -1) / norms
    rows_u = update.reshape(rows, -1)
    radial = torch.where(channel, torch.linalg.vecdot(unit, rows_u),
                         torch.linalg.vecdot(unit.flatten(), update.flatten()))
    invariant = channel | layer
    projected = torch.where(invariant, rows_u - unit * radial.unsqueeze(1), rows_u).view_as(update)
    ratio = torch.as_tensor(wd_ratio, dtype=update.dtype, device=update.device)  # float or 0-d tensor
    return projected, torch.where(invariant, ratio, 1.0)


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
                 *, foreach: bool | None = None, compiled: bool = False):
        if not 0.0 <= wd_ratio <= 1.0:
            raise ValueError(f"AdamP: invalid wd_ratio {wd_ratio!r} (must be in [0, 1])")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, delta=delta,
                                      wd_ratio=wd_ratio, nesterov=nesterov, foreach=foreach, compiled=compiled))

    def _coefficients(self, group, step, states):
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, eps=group["eps"], nesterov=float(group["nesterov"]),
                    delta=group["delta"], wd_ratio=group["wd_ratio"], decay=group["lr"] * group["weight_decay"],
                    step_size=group["lr"] / bias_correction(beta1, step),
                    bias_correction2_sqrt=math.sqrt(bias_correction(beta2, step)))

    @staticmethod
    def _kernel(params, grads, states, c):
        for p, g, m, v in zip(params, grads, states["exp_avg"], states["exp_avg_sq"]):
            m.copy_(c["beta1"] * m + (1 - c["beta1"]) * g)
            v.copy_(c["beta2"] * v + (1 - c["beta2"]) * g * g)
            numerator = (1 - c["nesterov"]) * m + c["nesterov"] * (c["beta1"] * m + (1 - c["beta1"]) * g)
            update = numerator / (v.sqrt() / c["bias_correction2_sqrt"] + c["eps"])
            ratio = 1.0
            if p.dim() > 1:
                update, ratio = radial_projection_no_sync(p, g, update, c["delta"], c["wd_ratio"], c["eps"])
            p.mul_(1 - c["decay"] * ratio)
            p.sub_(c["step_size"] * update)

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
        adam_moments_(exp_avgs, exp_avg_sqs, grads, beta1, beta2)
        denoms = adam_denominators(exp_avg_sqs, beta2, step, group["eps"])
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
