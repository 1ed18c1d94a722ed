"""Gradient transforms shared by the stability optimizers: small pure functions of tensors.

Each one is a few lines and names its source, so an optimizer reads as a chain of them, e.g.
Stable-SPAM = adaptive_max_clip -> norm_normalise -> Adam step, with a periodic moment reset.
None of them modifies its inputs. The orthogonal projection (perpGrad) lives in
`stablelab.optim.orthogonal.orthogonal_gradient`.
"""

from __future__ import annotations

import math

import torch


def spike_clip(grad: torch.Tensor, exp_avg_sq: torch.Tensor, threshold: float) -> torch.Tensor:
    """SPAM spike-aware clipping: where g^2 > theta * v, g <- sign(g) * sqrt(theta * v).

    v is the previous (not bias-corrected) second moment (Huang et al. 2025, arXiv 2501.06842,
    Algorithm 1). Written as a clamp to +-sqrt(theta * v), which is the same map: |g| > sqrt(theta v)
    exactly when g^2 > theta v."""
    bound = exp_avg_sq.mul(threshold).sqrt_()
    return torch.clamp(grad, min=bound.neg(), max=bound)


def spike_clip_active(step: int, reset_interval: int, warmup_steps: int) -> bool:
    """SPAM detects spikes only once v is informative: step >= N and (step mod reset) >= N.

    Official SPAM.py (`grad_accu_steps` N = 20): right after a reset v is 0 and every entry would
    look like a spike."""
    if step < warmup_steps:
        return False
    return reset_interval == 0 or step % reset_interval >= warmup_steps


def reset_warmup_scale(step: int, reset_interval: int, warmup_steps: int, death_rate: float = 0.99) -> float:
    """SPAM's update scale after a moment reset: 1 - CosineDecay(0.99, warmup)(c), c = steps since reset.

    Official SPAM.py: a CosineAnnealingLR with base 0.99, T_max = warmup + 1, eta_min 0 evaluated at
    c + 1, so the scale ramps from ~0.01 at the reset step to 1 after `warmup_steps` steps. There
    is no ramp before the first reset (the official counter starts past the warm-up)."""
    if reset_interval <= 0 or step < reset_interval:
        return 1.0
    since_reset = step % reset_interval
    if since_reset >= warmup_steps:
        return 1.0
    # closed form of CosineAnnealingLR: eta_min + (base - eta_min) (1 + cos(pi e / T_max)) / 2
    return 1.0 - death_rate * (1.0 + math.cos(math.pi * (since_reset + 1) / (warmup_steps + 1))) / 2.0


def adaptive_max_clip(grad: torch.Tensor, max_abs: torch.Tensor, max_abs_ema_hat: torch.Tensor) -> torch.Tensor:
    """Stable-SPAM adaptive spike clipping: entries with |g| > m_hat are rescaled by m_hat / max|g|.

    m_hat is the bias-corrected EMA of max|g| (Huang et al. 2025, arXiv 2502.17055, Algorithm 1)."""
    return torch.where(grad.abs() > max_abs_ema_hat, grad * (max_abs_ema_hat / max_abs), grad)


def norm_normalise_scale(grad_norm: torch.Tensor, norm_ema_hat: torch.Tensor, norm_sq_ema_hat: torch.Tensor,
                         eps: float) -> torch.Tensor:
    """The factor of Stable-SPAM's adaptive gradient norm: m_norm / (sqrt(v_norm) + eps) / ||g||.

    m_norm, v_norm: bias-corrected EMAs of ||g|| and ||g||^2 (arXiv 2502.17055, Algorithm 1)."""
    return norm_ema_hat / (norm_sq_ema_hat.sqrt() + eps) / grad_norm


def norm_normalise(grad: torch.Tensor, grad_norm: torch.Tensor, norm_ema_hat: torch.Tensor,
                   norm_sq_ema_hat: torch.Tensor, eps: float) -> torch.Tensor:
    """Stable-SPAM adaptive gradient norm: g <- g / ||g|| * m_norm / (sqrt(v_norm) + eps)."""
    return grad * norm_normalise_scale(grad_norm, norm_ema_hat, norm_sq_ema_hat, eps)
