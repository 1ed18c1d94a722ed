"""Opposing signals (Rosenfeld & Risteski 2023, "Outliers with opposing signals have an outsized
effect on neural network optimization"): small groups of examples whose losses move in opposite
directions from step to step while the rest barely move. Two pure functions: the per-example losses
of one forward pass, and the split of a window of them into the two opposing groups."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_example_losses(outputs: torch.Tensor, targets: torch.Tensor, kind: str = "cross_entropy") -> torch.Tensor:
    """One loss per example (float64, detached): "cross_entropy" (outputs: logits (N, C), targets:
    class indices) or "mse" (0.5 * squared error summed over the output's trailing dimensions)."""
    outputs = outputs.detach()
    if kind == "cross_entropy":
        return F.cross_entropy(outputs.double(), targets, reduction="none")
    if kind == "mse":
        diff = (outputs.double() - targets.double().reshape(outputs.shape)).reshape(len(outputs), -1)
        return 0.5 * diff.pow(2).sum(1)
    raise ValueError(f"unknown loss kind {kind!r}: use 'cross_entropy' or 'mse'")


def opposing_groups(loss_history: torch.Tensor, top_k: int = 20) -> dict:
    """Split the examples whose losses move most into two groups that move against each other.

    Args:
        loss_history: (T, N) per-example losses at T consecutive checks (T >= 3).
        top_k: how many of the most-moving examples (largest standard deviation of their
            step-to-step loss change) to split.

    Returns a dict: group_a, group_b (example indices, by the sign of their loading on the leading
    principal direction of the changes; group_a holds the example that moves most), correlation
    (cosine of the two groups' mean loss-change series over the window, not centred: near -1 when
    one group's loss rises whenever the other's falls; positive when both fall together),
    amplitude (mean |change| of the selected examples over the mean |change| of all: how
    much more they move than the rest), oscillation (the fraction of consecutive changes of
    group_a's mean loss that flip sign: 1 when it rises and falls in turn, 0 for a steady trend),
    and opposing (correlation < 0 with both groups non-empty)."""
    history = torch.as_tensor(loss_history, dtype=torch.float64)
    if history.dim() != 2 or history.shape[0] < 3:
        raise ValueError("loss_history must be (T, N) with T >= 3")
    changes = history.diff(dim=0)                      # (T-1, N) step-to-step loss changes
    k = max(2, min(top_k, changes.shape[1]))
    top = changes.std(dim=0).argsort(descending=True)[:k]
    block = changes[:, top] - changes[:, top].mean(dim=0, keepdim=True)
    # Leading right singular vector: the pattern of co-movement that explains most of the changes.
    _, _, vh = torch.linalg.svd(block, full_matrices=False)
    loading = vh[0] if vh[0][0] >= 0 else -vh[0]       # group_a contains the most-moving example
    group_a, group_b = top[loading >= 0], top[loading < 0]
    out = {"group_a": group_a.tolist(), "group_b": group_b.tolist(), "correlation": 0.0,
           "amplitude": float(changes[:, top].abs().mean() / changes.abs().mean().clamp_min(1e-300)),
           "oscillation": 0.0, "opposing": False}
    a_changes = changes[:, group_a].mean(1)
    if len(a_changes) >= 2:
        # Rosenfeld & Risteski 2023: the groups' losses oscillate; a steady trade-off does not flip sign.
        out["oscillation"] = float((torch.sign(a_changes[1:]) != torch.sign(a_changes[:-1])).double().mean())
    if len(group_a) and len(group_b):
        # Not centred: two groups that both improve have a positive cosine, only opposition is negative.
        a, b = changes[:, group_a].mean(1), changes[:, group_b].mean(1)
        denom = float(a.norm() * b.norm())
        out["correlation"] = float(a @ b) / denom if denom > 0 else 0.0
        out["opposing"] = out["correlation"] < 0
    return out
