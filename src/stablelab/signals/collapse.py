"""Softmax collapse and naive loss minimisation (Prieto et al. 2025, arXiv 2501.04697, sections 3-5).

- Softmax collapse (SC): in floating point, sum_j exp(x_j - max x) rounds to exactly 1 when every
  other term is below half an ulp of 1; the loss and the correct-class gradient are then exactly 0.
- Naive loss minimisation (NLM): once the training set is fitted, the loss keeps falling by scaling
  the logits up, i.e. by moving the weights along themselves; the gradient then aligns with the
  weights (for a ReLU MLP without biases, scaling the weights scales the logits).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn


def softmax_collapse_mask(logits: torch.Tensor, dtype: torch.dtype = torch.float32, dim: int = -1) -> torch.Tensor:
    """Boolean per sample: sum_j exp(x_j - max x) == 1 exactly in `dtype` (official logger's test)."""
    x = logits.detach().to(dtype)
    shifted = x - x.amax(dim=dim, keepdim=True)
    return torch.exp(shifted).sum(dim=dim) == 1


def softmax_collapse_fraction(logits: torch.Tensor, dtype: torch.dtype = torch.float32, dim: int = -1,
                              as_tensor: bool = False) -> float | torch.Tensor:
    """Fraction of samples in softmax collapse, in [0, 1] (Prieto et al. 2025, SC; classes on `dim`).
    `as_tensor`: a 0-d float32 tensor on the logits' device (no host sync)."""
    mask = softmax_collapse_mask(logits, dtype=dtype, dim=dim)
    if mask.numel() == 0:
        return torch.zeros((), device=logits.device) if as_tensor else 0.0
    fraction = mask.float().mean()
    return fraction if as_tensor else float(fraction)


@torch.no_grad()
def softmax_collapse_lost_fraction(logits: torch.Tensor, dtype: torch.dtype, mass_floor: float = 1e-4,
                                   dim: int = -1) -> torch.Tensor:
    """Fraction of samples whose softmax collapses in `dtype` although, in float32, the probability
    mass outside the top class is at least `mass_floor`: the loss and gradient that precision
    rounded away are material. 0-d tensor, no host sync.

    A sample that collapses in float32 has non-top mass below float32's resolution (< 2^-24 per
    class), so a float32 loss never counts here: collapse of a confidently correct prediction is
    information, not an instability. In bfloat16 (8 significant bits) a sample collapses with up
    to ~2^-9 of its mass per class lost (Prieto et al. 2025, section 3, on low precision)."""
    collapsed = softmax_collapse_mask(logits, dtype=dtype, dim=dim)
    if collapsed.numel() == 0:
        return torch.zeros((), device=logits.device)
    probabilities = torch.softmax(logits.detach().float(), dim=dim)
    non_top = 1.0 - probabilities.amax(dim=dim)
    return (collapsed & (non_top >= mass_floor)).float().mean()


@torch.no_grad()
def logit_statistics(logits: torch.Tensor, dtype: torch.dtype = torch.float32,
                     mass_floor: float = 1e-4) -> torch.Tensor:
    """[mean log Z, max |log Z|, softmax_collapse_fraction, softmax_collapse_lost_fraction] of
    logits (classes on the last dim) as one float32 vector, from one float32 pass over the logits
    (plus one in `dtype` when that is not float32): the monitor's sampled-step reading.

    With m = max x and s = sum_j exp(x_j - m): log Z = m + log s, collapse in float32 is s == 1
    (softmax_collapse_mask), and the top class's probability is exp(0) / s, so the mass outside it
    is 1 - 1/s. Equal to output_log_z_stats and the two fractions above (tested)."""
    x = logits.detach().float()
    top = x.amax(dim=-1, keepdim=True)
    sums = torch.exp(x - top).sum(dim=-1)
    log_z = top.squeeze(-1) + sums.log()  # logsumexp (signals.logits.output_log_z)
    if dtype == torch.float32:
        collapsed = sums == 1
        lost = torch.zeros((), device=x.device)  # a float32 collapse loses < 2^-24 per class
    else:
        collapsed = softmax_collapse_mask(logits, dtype=dtype)
        lost = (collapsed & (1.0 - 1.0 / sums >= mass_floor)).float().mean()
    return torch.stack([log_z.mean(), log_z.abs().amax(), collapsed.float().mean(), lost])


def zero_loss_fraction(
    logits: torch.Tensor, target: torch.Tensor, dtype: torch.dtype = torch.float32, loss_fn=None
) -> float:
    """Fraction of samples whose loss is exactly 0 in `dtype` (they give no gradient at all).

    loss_fn(logits, target, reduction="none") defaults to softmax cross-entropy; pass
    `stable_max_cross_entropy` to measure a StableMax model.
    """
    x = logits.detach().to(dtype)
    if loss_fn is None:
        losses = torch.nn.functional.cross_entropy(x, target, reduction="none")
    else:
        losses = loss_fn(x, target, reduction="none")
    if losses.numel() == 0:
        return 0.0
    return float((losses == 0).float().mean())


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b) = <a, b> / (|a| |b|) over all elements, in float64; NaN if either is zero."""
    a64, b64 = a.detach().double().flatten(), b.detach().double().flatten()
    denominator = torch.linalg.vector_norm(a64) * torch.linalg.vector_norm(b64)
    if denominator == 0:
        return float("nan")
    return float(a64 @ b64 / denominator)


def nlm_alignment(
    parameters: nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    gradients: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """cos(grad, weights) per parameter tensor (Prieto et al. 2025, NLM direction).

    `parameters`: a module, a name -> tensor mapping, or (name, tensor) pairs; gradients are read
    from `.grad` unless `gradients` (name -> tensor) is given. Tensors without a gradient are skipped.
    Sign: a gradient parallel to the weights gives +1. Under NLM gradient *descent* scales the
    weights up, so the gradient points against them and the value tends towards -1; the paper's
    "alignment with the NLM direction" is cos(-grad, w) = -nlm_alignment.
    """
    if isinstance(parameters, nn.Module):
        named = list(parameters.named_parameters())
    elif isinstance(parameters, Mapping):
        named = list(parameters.items())
    else:
        named = list(parameters)
    out: dict[str, float] = {}
    for name, weight in named:
        grad = gradients.get(name) if gradients is not None else weight.grad
        if grad is None:
            continue
        out[name] = cosine_similarity(grad, weight)
    return out
