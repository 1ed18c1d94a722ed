"""Gradient spike statistics (SPAM, Huang et al. 2025, arXiv 2501.06842; official code
TianjinYellow/SPAM-Optimizer): a gradient is a spike when g^2 is far above the second moment v.

Pure functions over lists of tensors, reduced on the device (0-d or 1-d tensors, no host sync)."""

from __future__ import annotations

from typing import Sequence

import torch


def squared_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """||t||^2 for each tensor, as one 1-d float tensor on the tensors' device."""
    norms = torch._foreach_norm([t.detach() for t in tensors], 2)
    return torch.stack([n.float() for n in norms]).pow(2)


def tensor_spike_ratio(grad_sq_norms: torch.Tensor, numels: torch.Tensor,
                       second_moment_means: torch.Tensor) -> torch.Tensor:
    """Per-tensor SPAM ratio mean(g^2) / mean(v) (1-d tensor).

    SPAM flags an element when g^2 > theta * v (theta = 5000); this is the same ratio taken over a
    whole tensor, so one number per tensor is cheap enough for every step. A tensor whose v is 0
    (no history yet) gets ratio 1 (nothing to compare against)."""
    mean_g2 = grad_sq_norms / numels
    return torch.where(second_moment_means > 0, mean_g2 / second_moment_means.clamp_min(1e-38),
                       torch.ones_like(mean_g2))


@torch.no_grad()
def spike_fraction(grads: Sequence[torch.Tensor], second_moments: Sequence[torch.Tensor],
                   theta: float = 5000.0) -> torch.Tensor:
    """Fraction of elements with g^2 > theta * v (SPAM's element-wise spike rule; theta 5000 is its
    default). Elements with v = 0 are not counted as spikes (SPAM skips detection then)."""
    spikes, total = None, 0
    for g, v in zip(grads, second_moments):
        g2 = g.detach().float().pow(2)
        v = v.detach().float()
        count = ((g2 > theta * v) & (v > 0)).sum()
        spikes = count if spikes is None else spikes + count
        total += g.numel()
    if spikes is None:
        return torch.tensor(0.0)
    return spikes.float() / max(total, 1)
