"""AdamP: Adam that removes the radial component of the update for scale-invariant weights.

Heo et al. 2021, "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
Weights", ICLR 2021, arXiv 2006.08217; official code clovaai/AdamP, adamp/adamp.py.
"""

from __future__ import annotations

import math

import torch

from stablelab.optim.base import (
    StabilityOptimizer,
    adam_denominators,
    adam_moments_,
    bias_correction,
    column,
    use_foreach,
)


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


def adamp(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
          exp_avg_sqs: list[torch.Tensor], *, step: int, lr: float, beta1: float, beta2: float, eps: float,
          weight_decay: float, delta: float, wd_ratio: float, nesterov: bool, foreach: bool | None = None) -> None:
    """One AdamP step, in place on `params`, `exp_avgs` and `exp_avg_sqs` (the functional core).

    Args:
        params, grads, exp_avgs, exp_avg_sqs: lists of tensors of equal length (grads not modified).
        step: the step count t (from 1) of these tensors, this step included.
        lr, beta1, beta2, eps: as in Adam (eps outside the bias-corrected square root, official).
        weight_decay: decoupled, p -= lr * wd * ratio * p, ratio = `wd_ratio` for projected tensors.
        delta: the cosine threshold of the scale-invariance test (`radial_projection`).
        nesterov: use (b1 m + (1 - b1) g) instead of m.
        foreach: the `_multi_tensor_adamp` path (default: where foreach kernels exist); it selects
            the projection without a host sync, the per-tensor path branches on it.
    """
    path = _multi_tensor_adamp if use_foreach(foreach, params) else _single_tensor_adamp
    path(params, grads, exp_avgs, exp_avg_sqs, step=step, beta1=beta1, beta2=beta2, eps=eps, decay=lr * weight_decay,
         delta=delta, wd_ratio=wd_ratio, nesterov=nesterov, step_size=lr / bias_correction(beta1, step))


def _single_tensor_adamp(params, grads, exp_avgs, exp_avg_sqs, *, step, beta1, beta2, eps, decay, delta, wd_ratio,
                         nesterov, step_size):
    for param, grad, exp_avg, exp_avg_sq in zip(params, grads, exp_avgs, exp_avg_sqs):
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().div_(math.sqrt(bias_correction(beta2, step))).add_(eps)
        numerator = exp_avg.lerp(grad, 1.0 - beta1) if nesterov else exp_avg
        update = numerator / denom
        ratio = 1.0
        if param.dim() > 1:
            update, ratio = radial_projection(param, grad, update, delta, wd_ratio, eps)
        if decay != 0.0:
            param.mul_(1.0 - decay * ratio)
        param.add_(update, alpha=-step_size)


def _multi_tensor_adamp(params, grads, exp_avgs, exp_avg_sqs, *, step, beta1, beta2, eps, decay, delta, wd_ratio,
                        nesterov, step_size):
    adam_moments_(exp_avgs, exp_avg_sqs, grads, beta1, beta2)
    denoms = adam_denominators(exp_avg_sqs, beta2, step, eps)
    numerators = torch._foreach_lerp(exp_avgs, grads, 1.0 - beta1) if nesterov else exp_avgs
    updates = list(torch._foreach_div(numerators, denoms))
    for i, param in enumerate(params):
        if param.dim() <= 1:
            continue
        updates[i], ratio = radial_projection_no_sync(param, grads[i], updates[i], delta, wd_ratio, eps)
        if decay != 0.0:
            param.mul_(1.0 - decay * ratio)
    if decay != 0.0:
        vectors = [p for p in params if p.dim() <= 1]
        if vectors:
            torch._foreach_mul_(vectors, 1.0 - decay)
    torch._foreach_add_(params, updates, alpha=-step_size)


class AdamP(StabilityOptimizer):
    """AdamP with the official defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, delta 0.1,
    wd_ratio 0.1, nesterov False, decoupled decay p -= lr * wd * ratio * p (before the step,
    after the projection test, as official).

    Update u = m / (sqrt(v) / sqrt(1 - b2^t) + eps) (nesterov: (b1 m + (1 - b1) g) instead of m),
    projected by `radial_projection` for tensors with more than one dimension, then
    p -= lr / (1 - b1^t) * u. The fast path selects the projection without a host sync.
    The math is the functional core `adamp`.
    """

    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, delta: float = 0.1, wd_ratio: float = 0.1, nesterov: bool = False,
                 *, foreach: bool | None = None):
        if not 0.0 <= wd_ratio <= 1.0:
            raise ValueError(f"AdamP: invalid wd_ratio {wd_ratio!r} (must be in [0, 1])")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, delta=delta,
                                      wd_ratio=wd_ratio, nesterov=nesterov, foreach=foreach))

    def _step_tensors(self, group, step, params, grads, states, foreach):
        beta1, beta2 = group["betas"]
        adamp(params, grads, column(states, "exp_avg"), column(states, "exp_avg_sq"), step=step, lr=group["lr"],
              beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"], delta=group["delta"],
              wd_ratio=group["wd_ratio"], nesterov=group["nesterov"], foreach=foreach)
