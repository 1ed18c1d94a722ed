"""Weight-relative signals: update-to-weight ratio, cos(grad, weights) and gradient RMS against
AdamW's eps. Pure functions over lists of tensors, reduced on the device (no host sync)."""

from __future__ import annotations

from typing import Sequence

import torch


def tensor_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-tensor L2 norms as one float32 vector (one foreach norm; bf16 and fp32 tensors may mix)."""
    norms = torch._foreach_norm([t.detach() if t.requires_grad else t for t in tensors], 2)
    if all(n.dtype == norms[0].dtype for n in norms):
        return torch.stack(norms).float()
    return torch.stack([n.float() for n in norms])


@torch.no_grad()
def update_to_weight_ratio(before: Sequence[torch.Tensor] | torch.Tensor, after: Sequence[torch.Tensor] | torch.Tensor,
                           weight_norms: torch.Tensor | None = None,
                           sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Per tensor RMS(after - before) / RMS(after) = ||delta|| / ||w|| (1-d tensor).

    `weight_norms`: ||after|| per tensor if the caller has it (it moves slowly); `sizes`: before and
    after are flat concatenations of tensors of these sizes (one subtraction instead of one per
    tensor: the monitor keeps its weight sample that way).

    The usual health check of an optimizer step (around 1e-3 is typical for Adam, Karpathy's
    "update:data ratio"); a learning rate raised 100x shows at once as a 100x larger ratio."""
    if sizes is not None:
        deltas = torch.sub(after, before).split(list(sizes))
        after = after.split(list(sizes))
    else:
        deltas = torch._foreach_sub(list(after), list(before))
    norms = tensor_norms(after) if weight_norms is None else weight_norms
    return tensor_norms(deltas) / norms.clamp_min(1e-30)


@torch.no_grad()
def gradient_weight_cosine(grads: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                           grad_norms: torch.Tensor | None = None) -> torch.Tensor:
    """Per tensor cos(grad, w) = <g, w> / (||g|| ||w||) (1-d tensor); `grad_norms`, if the caller
    has them already, saves one pass over the gradients.

    The naive-loss-minimisation (NLM) direction of Prieto et al. 2025 (arXiv 2501.04697): a gradient
    aligned with the weights only scales the logits; cos rises towards ~0.9 in output layers."""
    dots = torch.stack([torch.vdot(g.detach().reshape(-1).float(), w.detach().reshape(-1).float())
                        for g, w in zip(grads, weights)])
    g_norms = tensor_norms(grads) if grad_norms is None else grad_norms.to(dots.device)
    return dots / (g_norms * tensor_norms(weights)).clamp_min(1e-30)


def gradient_rms(grad_norms: torch.Tensor, numels: torch.Tensor) -> torch.Tensor:
    """Per tensor RMS(g) = ||g|| / sqrt(numel), from norms already computed (1-d tensor)."""
    return grad_norms / numels.sqrt()


def eps_ratio(grad_rms: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    """RMS(g) / eps: AdamW's update m / (sqrt(v) + eps) shrinks once sqrt(v) ~ RMS(g) nears eps
    (Wortsman et al. 2023, arXiv 2309.14322, section 3.4). Below ~10 the update is visibly damped."""
    return grad_rms / eps
