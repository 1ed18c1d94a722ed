"""Gradient transforms: small functions of lists of tensors, in optax's spirit.

Each transform takes a list of gradients (and whatever statistics it needs, one entry per
gradient) and returns new gradients or a scale; none modifies its inputs except
`clip_by_global_norm`, which scales in place like `torch.nn.utils.clip_grad_norm_`. They are the
one way gradients are changed before a step: the optimizers' per-tensor and foreach paths call
the same transform (the per-tensor path with one-element lists), and so do the orthogonal
wrapper (`optim/orthogonal.py`), the guard's clip (`monitor/guard.py`) and the proxy run's clip.

    spike_clip            SPAM's spike-aware clipping           (arXiv 2501.06842, Alg. 1)
    adaptive_max_clip     Stable-SPAM's clip against EMA max|g| (arXiv 2502.17055, Alg. 1)
    normalize_by_norm     Stable-SPAM's adaptive gradient norm  (arXiv 2502.17055, Alg. 1)
    orthogonal_projection perpGrad, g minus its component on w  (arXiv 2501.04697, sec. 6)
    clip_by_global_norm   global-norm clipping, torch's clip_grad_norm_ as a transform

and two schedules SPAM reads: `spike_clip_active`, `reset_warmup_scale`.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

Tensors = list[torch.Tensor]


def spike_clip(grads: Tensors, exp_avg_sqs: Tensors, threshold: float) -> Tensors:
    """SPAM spike-aware clipping: where g^2 > theta * v, g <- sign(g) * sqrt(theta * v).

    Args:
        grads: gradients (not modified).
        exp_avg_sqs: the previous (not bias-corrected) second moments v, one per gradient.
        threshold: theta (official default 5000).

    Returns the clipped gradients (Huang et al. 2025, arXiv 2501.06842, Algorithm 1). Written as a
    clamp to +-sqrt(theta * v), the same map: |g| > sqrt(theta v) exactly when g^2 > theta v."""
    bounds = torch._foreach_mul(exp_avg_sqs, threshold)
    torch._foreach_sqrt_(bounds)
    clipped = torch._foreach_minimum(grads, bounds)
    torch._foreach_neg_(bounds)
    torch._foreach_maximum_(clipped, bounds)
    return list(clipped)


def spike_clip_active(step: int, reset_interval: int, warmup_steps: int) -> bool:
    """SPAM detects spikes only once v is informative: step >= N and (step mod reset) >= N.

    Official SPAM.py (`grad_accu_steps` N = 20): right after a reset v is 0 and every entry would
    look like a spike."""
    if step < warmup_steps:
        return False
    return reset_interval == 0 or step % reset_interval >= warmup_steps


def reset_warmup_scale(step: int, reset_interval: int, warmup_steps: int, death_rate: float = 0.99) -> float:
    """SPAM's update scale after a moment reset: 1 - CosineDecay(0.99, warmup)(c), c = steps since reset.

    Official SPAM.py: `CosineDecay.get_dr(c)` calls `CosineAnnealingLR(base 0.99, T_max = warmup + 1,
    eta_min 0).step(c)`, the closed form at c itself, and returns eta_min once c >= warmup; its
    counter `current_step` is 0 on the reset step. So the scale is 1 - 0.99 = 0.01 on the reset
    step and 1 from `warmup_steps` steps after it. No ramp before the first reset (the official
    counter starts at warmup + 1). pytorch-optimizer's port evaluates at c + 1 (one step ahead)."""
    if reset_interval <= 0 or step < reset_interval:
        return 1.0
    since_reset = step % reset_interval
    if since_reset >= warmup_steps:
        return 1.0
    # closed form of CosineAnnealingLR: eta_min + (base - eta_min) (1 + cos(pi e / T_max)) / 2
    return 1.0 - death_rate * (1.0 + math.cos(math.pi * since_reset / (warmup_steps + 1))) / 2.0


def adaptive_max_clip(grads: Tensors, max_abs: Tensors, bounds: Tensors) -> Tensors:
    """Stable-SPAM adaptive spike clipping: entries with |g| > m_hat are rescaled by m_hat / max|g|.

    Args:
        grads: gradients (not modified).
        max_abs: max|g| of each gradient (0-d tensors).
        bounds: m_hat, the bias-corrected EMA of max|g| of each gradient (0-d tensors).

    Returns the clipped gradients (Huang et al. 2025, arXiv 2502.17055, Algorithm 1; official
    `grad[mask] = grad[mask] / max_gradient * m_max_hat`)."""
    return [torch.where(g.abs() > b, g * (b / m), g) for g, m, b in zip(grads, max_abs, bounds)]


def normalize_by_norm_scales(norms: torch.Tensor, norm_ema_hats: torch.Tensor, norm_sq_ema_hats: torch.Tensor,
                             eps: float) -> torch.Tensor:
    """The factors of Stable-SPAM's adaptive gradient norm: m_norm / (sqrt(v_norm) + eps) / ||g||.

    All arguments are tensors of the same shape (one entry per gradient, or 0-d): ||g||, and the
    bias-corrected EMAs of ||g|| and ||g||^2 (arXiv 2502.17055, Algorithm 1). A zero gradient
    gets factor 0 (it stays 0; official: `if grad_norm > 0: grad = grad / grad_norm * c_norm`)."""
    ratio = norm_ema_hats / (norm_sq_ema_hats.sqrt() + eps)
    return torch.where(norms > 0, ratio / norms, 0.0)


def normalize_by_norm(grads: Tensors, norms: torch.Tensor, norm_ema_hats: torch.Tensor,
                      norm_sq_ema_hats: torch.Tensor, eps: float) -> Tensors:
    """Stable-SPAM adaptive gradient norm: g_i <- g_i / ||g_i|| * m_i / (sqrt(v_i) + eps).

    Args:
        grads: gradients (not modified).
        norms, norm_ema_hats, norm_sq_ema_hats: 1-d tensors, one entry per gradient: ||g_i|| and
            the bias-corrected EMAs of ||g_i|| and ||g_i||^2.
        eps: added to sqrt(v_norm).

    Returns the normalised gradients; a zero gradient stays zero."""
    scales = normalize_by_norm_scales(norms, norm_ema_hats, norm_sq_ema_hats, eps)
    return list(torch._foreach_mul(grads, [s.to(g.dtype) for s, g in zip(scales.unbind(), grads)]))


def orthogonal_gradient(weight: torch.Tensor, grad: torch.Tensor, eps: float = 1e-30,
                        rescale: bool = True) -> torch.Tensor:
    """One tensor of `orthogonal_projection`: g - (<w, g> / (<w, w> + eps)) w, rescaled to ||g||."""
    w, g = weight.detach().flatten(), grad.detach().flatten()
    # reduce in at least float32: the dot products of low-precision tensors lose the projection
    compute = torch.promote_types(g.dtype, torch.float32)
    w, g = w.to(compute), g.to(compute)
    g_perp = g - (w @ g) / (w @ w + eps) * w
    if rescale:
        # official code: g_perp * (||g|| / (||g_perp|| + eps)), so the step length is unchanged
        g_perp = g_perp * (torch.linalg.vector_norm(g) / (torch.linalg.vector_norm(g_perp) + eps))
    return g_perp.view_as(grad).to(grad.dtype)


def orthogonal_projection(grads: Tensors, weights: Tensors, eps: float = 1e-30, rescale: bool = True) -> Tensors:
    """perpGrad: each gradient loses its component along its weight tensor, keeping its norm.

    Args:
        grads: gradients (not modified).
        weights: the parameter tensors w, one per gradient.
        eps: added to <w, w> and to ||g_perp|| (official orthograd.py: 1e-30).
        rescale: rescale g_perp to ||g|| (official: yes).

    Returns g_perp = g - (<w, g> / (<w, w> + eps)) w, times ||g|| / (||g_perp|| + eps) (Prieto et al.
    2025, arXiv 2501.04697, section 6), reduced in at least float32."""
    return [orthogonal_gradient(w, g, eps=eps, rescale=rescale) for g, w in zip(grads, weights)]


def _gradients(tensors: torch.Tensor | Iterable[torch.Tensor | None]) -> Tensors:
    """Gradients from parameters (their .grad) or from gradient tensors; None entries skipped."""
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    out = []
    for t in tensors:
        if t is not None and (isinstance(t, torch.nn.Parameter) or t.requires_grad):
            t = t.grad  # a parameter: clip its gradient, as torch.nn.utils.clip_grad_norm_ does
        if t is not None:
            out.append(t)
    return out


def clip_by_global_norm(tensors: torch.Tensor | Iterable[torch.Tensor | None], max_norm: float, *,
                        norm_type: float = 2.0, eps: float = 1e-6, total_norm: torch.Tensor | None = None,
                        foreach: bool | None = None) -> torch.Tensor:
    """Scale gradients in place so their global norm is at most `max_norm`; returns the total norm.

    A drop-in for `torch.nn.utils.clip_grad_norm_(parameters, max_norm)`: the same factor
    min(1, max_norm / (total_norm + 1e-6)), applied with foreach kernels without a host sync
    (no data-dependent branch), and the total norm returned as a tensor.

    Args:
        tensors: parameters (their `.grad` is clipped; parameters without one are skipped) or
            gradient tensors (None entries skipped), or a single tensor.
        max_norm: the largest allowed global norm.
        norm_type: the p of the p-norm (torch's default 2; `math.inf` for the max norm).
        eps: added to the total norm in the factor (torch's 1e-6).
        total_norm: the global norm when the caller has it already (the guard); computed otherwise.
        foreach: foreach kernels for the norms and the scaling (default: where torch has them; the
            scaling is one `_foreach_mul_` either way).

    Returns the global norm of the gradients before clipping (0-d tensor; 0 for no gradients).
    """
    grads = _gradients(tensors)
    if not grads:
        return torch.tensor(0.0)
    if total_norm is None:
        if foreach is False:
            norms = [torch.linalg.vector_norm(g, norm_type) for g in grads]
        else:
            norms = torch._foreach_norm(grads, norm_type)
        device = grads[0].device
        total_norm = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), norm_type)
    factor = torch.clamp(max_norm / (total_norm + eps), max=1.0)
    torch._foreach_mul_(grads, factor.to(grads[0].device))
    return total_norm
