"""Gradient and update signals: pure functions of tensors, reduced on the device."""

from __future__ import annotations

from typing import Iterable

import torch


def rms(tensor: torch.Tensor) -> torch.Tensor:
    """Root mean square of all elements (0-d tensor)."""
    return tensor.detach().float().pow(2).mean().sqrt()


def global_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """L2 norm of the concatenation of tensors (0-d tensor); non-finite values propagate."""
    tensors = [t.detach() for t in tensors if t is not None]
    if not tensors:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])
    )


def update_rms(before: Iterable[torch.Tensor], after: Iterable[torch.Tensor]) -> torch.Tensor:
    """RMS of the parameter update (after - before) over all elements of all tensors."""
    total, count = None, 0
    for b, a in zip(before, after):
        sq = (a.detach().float() - b.detach().float()).pow(2).sum()
        total = sq if total is None else total + sq
        count += b.numel()
    if total is None:
        return torch.tensor(0.0)
    return (total / max(count, 1)).sqrt()
