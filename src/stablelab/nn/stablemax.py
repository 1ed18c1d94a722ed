"""StableMax (Prieto et al. 2025, "Grokking at the edge of numerical stability", arXiv 2501.04697).

Softmax divides exponentials, so once one logit leads the others by ~17 (float32) or ~37 (float64)
the other terms are absorbed, the loss is exactly 0 and learning stops (softmax collapse).
StableMax replaces exp by s(x), which grows linearly and decays like 1/|x|:

    s(x) = x + 1        for x >= 0
    s(x) = 1 / (1 - x)  for x < 0
    StableMax_i(x) = s(x_i) / sum_j s(x_j),    loss = -log StableMax_y(x)

s is continuous with a continuous first derivative at 0 (s(0) = 1, s'(0) = 1). StableMax is not
shift-invariant, so there is no max subtraction: the logits are used as they are.
"""

from __future__ import annotations

import torch
from torch import nn


def stable_max_s(x: torch.Tensor) -> torch.Tensor:
    """s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0 (Prieto et al. 2025, eq. for StableMax)."""
    # Each branch only sees inputs of its own sign, so neither can divide by zero and torch.where's
    # backward never multiplies 0 by an infinite derivative (which would give NaN).
    positive = x.clamp(min=0) + 1
    negative = 1 / (1 - x.clamp(max=0))
    return torch.where(x >= 0, positive, negative)


def log_stable_max(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log StableMax along `dim`: log s(x_i) - log sum_j s(x_j)."""
    s = stable_max_s(x)
    return torch.log(s) - torch.log(s.sum(dim=dim, keepdim=True))


def stable_max(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """StableMax probabilities along `dim` (they sum to 1)."""
    s = stable_max_s(x)
    return s / s.sum(dim=dim, keepdim=True)


class StableMax(nn.Module):
    """StableMax as a module, like `torch.nn.Softmax(dim)`."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stable_max(x, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def stable_max_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "mean",
    ignore_index: int = -100,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """-log StableMax_y(logits), with the call shape of `torch.nn.functional.cross_entropy`.

    logits: (C,), (N, C) or (N, C, d1, ...) with classes on dim 1 (dim 0 for 1-d input);
    target: class indices of shape (), (N,) or (N, d1, ...). `dtype` computes the loss in another
    precision (the official code uses float64); the result keeps that precision.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    if dtype is not None:
        logits = logits.to(dtype)
    class_dim = 0 if logits.dim() == 1 else 1
    s = stable_max_s(logits)
    target = target.long()
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(class_dim)
    s_target = s.gather(class_dim, safe_target).squeeze(class_dim)
    is_target = torch.zeros_like(s, dtype=torch.bool).scatter_(class_dim, safe_target, True)
    s_others = s.masked_fill(is_target, 0).sum(dim=class_dim)
    # -log(s_y / sum_j s_j) = log1p(sum_{j != y} s_j / s_y): no cancellation between two large logs
    # when StableMax_y is close to 1, so the loss keeps its relative precision in float32
    picked = torch.log1p(s_others / s_target)
    losses = torch.where(valid, picked, torch.zeros_like(picked))
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    # like cross_entropy: mean over the non-ignored targets (NaN if there are none)
    return losses.sum() / valid.sum().to(losses.dtype)
