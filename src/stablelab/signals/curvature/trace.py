"""The Hessian trace from Hessian-vector products: Hutchinson and Hutch++."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from stablelab.signals.curvature.hessian import HessianOperator, LossFn


def _hutchinson(op: HessianOperator, n_products: int, generator: torch.Generator) -> float:
    # Hutchinson (1989): E[z^T H z] = tr(H) for Rademacher z.
    total = 0.0
    for _ in range(n_products):
        z = op.random_vector(generator, "rademacher")
        total += float(torch.dot(z, op(z)))
    return total / n_products



def _hutch_plus_plus(op: HessianOperator, n_products: int, generator: torch.Generator) -> float:
    # Hutch++ (Meyer, Musco, Musco, Woodruff 2021, Algorithm 1): exact trace on the range of H S,
    # Hutchinson on the rest; n_products/3 products for each of the three parts.
    s = max(1, min(n_products // 3, op.numel))
    g = max(1, n_products - 2 * s)
    sketch = torch.stack([op(op.random_vector(generator, "rademacher")) for _ in range(s)], dim=1)
    q, _ = torch.linalg.qr(sketch.double())
    q = q.to(op.dtype)
    exact = sum(float(torch.dot(q[:, i], op(q[:, i]))) for i in range(q.shape[1]))
    rest = 0.0
    for _ in range(g):
        z = op.random_vector(generator, "rademacher")
        z = z - q @ (q.T @ z)  # (I - QQ^T) z
        rest += float(torch.dot(z, op(z)))
    return exact + rest / g



def hessian_trace(model: nn.Module, loss_fn: LossFn, batch, n_products: int = 60, method: str = "hutch++",
                  params: Sequence[torch.Tensor] | None = None,
                  preconditioner: Sequence[torch.Tensor] | None = None, seed: int = 0) -> float:
    """Trace of the Hessian of `loss_fn(model, batch)` (every parameter with requires_grad, or
    `params`) from `n_products` Hessian-vector products. method: "hutch++" (default; error falls
    like 1/n_products when the spectrum decays) or "hutchinson" (1/sqrt(n_products)). With a
    preconditioner P, the trace of P^{-1} H."""
    op = HessianOperator(model, loss_fn, batch, params, preconditioner)
    return operator_trace(op, n_products, method, seed)



def operator_trace(op: HessianOperator, n_products: int, method: str = "hutch++", seed: int = 0) -> float:
    """Trace of an already-built `HessianOperator` (see `hessian_trace`)."""
    if n_products < 1:
        raise ValueError("n_products must be at least 1")
    generator = torch.Generator().manual_seed(seed)
    if method == "hutch++":
        if n_products < 3:
            return _hutchinson(op, n_products, generator)
        return _hutch_plus_plus(op, n_products, generator)
    if method == "hutchinson":
        return _hutchinson(op, n_products, generator)
    raise ValueError(f"unknown trace method {method!r}: use 'hutch++' or 'hutchinson'")
