"""The two indicators of ReSTE (Wu et al. 2023, ICCV, "Estimator Meets Equilibrium Perspective"):
estimating error and gradient stability, as the official code computes them (DravenALG/ReSTE,
utils/tools.py at commit 42904d1: get_fitting_error, ReSTE_Forward, get_stability_var).

A sign estimator f trades one against the other: the closer f is to sign (small estimating error),
the sharper its derivative and the more divergent the latent gradients (large Var(|g|)).

    estimating error    = sum over tensors of || f_o(w) - sign(w) ||_2,  f_o(w) = sign(w) |w|^(1/o)
    gradient stability  = sum over tensors of Var(|g|)      (unbiased variance, torch.var default)

Both sum over the tensors given, as the official code sums over the binarised conv layers. The
official code evaluates the error at o = o_end (the final power), not at the current o; pass the
o you mean. Pure functions: no hooks, no host sync; each returns a 0-d float32 tensor.
"""

from __future__ import annotations

from typing import Iterable

import torch

from stablelab.errors import UsageError


def _as_list(tensors: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(tensors, torch.Tensor):
        return [tensors]
    return [t for t in tensors if t is not None]


def power_estimator(w: torch.Tensor, o: float) -> torch.Tensor:
    """f_o(w) = sign(w) |w|^(1/o), the forward function whose derivative ReSTE uses (unclipped)."""
    # Wu et al. 2023, eq. of the equivalent ReSTE forward; official utils/tools.py ReSTE_Forward
    return torch.sign(w) * w.abs().pow(1.0 / o)


@torch.no_grad()
def estimating_error(weights: torch.Tensor | Iterable[torch.Tensor], o: float) -> torch.Tensor:
    """sum_l || sign(w_l) |w_l|^(1/o) - sign(w_l) ||_2 over the latent weight tensors w_l.

    Args:
        weights: one tensor or several (the binarised layers' latent weights).
        o: the power of the estimator, o >= 1 (the official code passes o_end, 3 by default).
    """
    if not float(o) >= 1:
        raise UsageError(f"the estimating error needs o >= 1, got o = {o}")
    total = torch.zeros((), dtype=torch.float32)
    for w in _as_list(weights):
        w = w.detach().float().reshape(-1)
        # official get_fitting_error: torch.norm(ReSTE_Forward(w, o) - w.sign(), p=2), summed
        total = total.to(w.device) + torch.linalg.vector_norm(power_estimator(w, o) - torch.sign(w))
    return total


@torch.no_grad()
def gradient_stability(grads: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    """sum_l Var(|g_l|) over the gradient tensors g_l (unbiased variance, n - 1 in the denominator).

    Larger means less stable (the paper's indicator: the variance of the gradient magnitudes).
    A tensor of one element contributes NaN, as torch.var does; None gradients are skipped."""
    total = torch.zeros((), dtype=torch.float32)
    for g in _as_list(grads):
        g = g.detach().float().reshape(-1)
        # official get_stability_var: torch.var(grad.abs()), summed over layers
        total = total.to(g.device) + torch.var(g.abs())
    return total
