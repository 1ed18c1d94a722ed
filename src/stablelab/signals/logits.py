"""Output-logit signals (Wortsman et al. 2023, section 3.2: output logit divergence)."""

from __future__ import annotations

import torch


def output_log_z(logits: torch.Tensor) -> torch.Tensor:
    """log Z = logsumexp of the output logits over the vocabulary (last dim), per position."""
    return torch.logsumexp(logits.float(), dim=-1)


@torch.no_grad()
def output_log_z_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean log Z, max |log Z|) as 0-d tensors on the logits' device (no host sync)."""
    log_z = output_log_z(logits)
    return log_z.mean(), log_z.abs().amax()


def z_loss(logits: torch.Tensor, coefficient: float) -> torch.Tensor:
    """z-loss = coefficient * mean((log Z)^2) (Wortsman et al. 2023; PaLM, Chowdhery et al. 2022)."""
    return coefficient * output_log_z(logits).pow(2).mean()
