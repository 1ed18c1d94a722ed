"""Top Hessian eigenvalues: Lanczos with full reorthogonalisation, and power iteration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from stablelab.signals.curvature.hessian import HessianOperator, LossFn


@dataclass
class LanczosResult:
    eigenvalues: torch.Tensor   # k largest (algebraic) Ritz values, largest first, float64
    residuals: torch.Tensor     # ||H y - theta y|| for each, from the Lanczos recurrence
    products: int               # Hessian-vector products used
    converged: bool
    history: list[float]        # top Ritz value after each product
    vector: torch.Tensor | None = None  # top Ritz vector (flat, unit norm): a warm start for the next call



def lanczos(operator: Callable[[torch.Tensor], torch.Tensor], n: int, k: int = 1, tol: float = 1e-3,
            max_iter: int = 100, start: torch.Tensor | None = None, rule: str = "residual") -> LanczosResult:
    """Largest-k eigenvalues of a symmetric operator by Lanczos with full reorthogonalisation.

    Stopping rule, from the residual r_i = beta_m |s_{m,i}| of each top-k Ritz pair (Golub & Van Loan,
    Matrix Computations, 10.1.4):
    - rule="residual" (default): r_i <= tol |theta_i|. Some eigenvalue then lies within r_i of
      theta_i (Bauer-Fike for symmetric matrices): guaranteed relative error <= tol to *an*
      eigenvalue. Like any Krylov method it can still stop early on a cluster it has not resolved
      (top eigenvalues closer than the start vector lets it see); ask for k > 1 to resolve one.
    - rule="gap": min(r_i, r_i^2 / gap_i) <= tol |theta_i|, gap_i = distance from theta_i
      to the nearest other Ritz value (Kato-Temple / Parlett, The Symmetric Eigenvalue Problem,
      11.7: the eigenvalue error is O(r^2 / gap)). Fewer products, but the Ritz gap can overstate the
      true gap while a neighbouring eigenvalue is unresolved: an estimate, not a bound (on a 1%-gap
      cluster it stopped 4% off), so it is not the default."""
    if rule not in ("gap", "residual"):
        raise ValueError(f"unknown stopping rule {rule!r}: use 'gap' or 'residual'")
    if start is None:
        raise ValueError("lanczos needs a start vector")
    max_iter = max(1, min(max_iter, n))
    dtype, device = start.dtype, start.device
    basis = torch.zeros(max_iter + 1, n, dtype=dtype, device=device)
    basis[0] = start / torch.linalg.vector_norm(start)
    alphas: list[float] = []
    betas: list[float] = []
    history: list[float] = []
    theta = resid = None
    converged = False
    for j in range(max_iter):
        w = operator(basis[j])
        alpha = float(torch.dot(w, basis[j]))
        w = w - alpha * basis[j]
        if j > 0:
            w = w - betas[-1] * basis[j - 1]
        q = basis[: j + 1]
        for _ in range(2):  # twice is enough (Kahan-Parlett "twice is enough")
            w = w - q.T @ (q @ w)
        beta = float(torch.linalg.vector_norm(w))
        if not (math.isfinite(alpha) and math.isfinite(beta)):  # a diverged model: report NaN, not raise
            nan = torch.full((min(k, j + 1),), float("nan"), dtype=torch.float64)
            return LanczosResult(nan, nan.clone(), j + 1, False, history + [float("nan")], None)
        alphas.append(alpha)
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(t)
        take = min(k, j + 1)
        theta = values.flip(0)[:take]
        resid = beta * vectors[-1].flip(0)[:take].abs()
        history.append(float(theta[0]))
        scale = float(values.abs().max())
        error = resid
        if rule == "gap" and j > 0:
            ritz = values.flip(0)
            gaps = torch.stack([(ritz[i] - torch.cat([ritz[:i], ritz[i + 1:]])).abs().min() for i in range(take)])
            error = torch.minimum(resid, resid.pow(2) / gaps.clamp_min(1e-300))
        if j + 1 >= k and bool((error <= tol * theta.abs().clamp_min(1e-12 * scale + 1e-30)).all()):
            converged = True
            break
        if beta <= 1e-10 * max(scale, 1e-30):  # invariant subspace: the Ritz values are exact
            converged = j + 1 >= k
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    m = len(alphas)
    top_vector = basis[:m].T @ vectors[:, -1].to(dtype)
    return LanczosResult(theta, resid, m, converged, history, top_vector / torch.linalg.vector_norm(top_vector))



def top_eigenvalues(model: nn.Module, loss_fn: LossFn, batch, k: int = 1, tol: float = 1e-3,
                    max_iter: int = 100, params: Sequence[torch.Tensor] | None = None,
                    preconditioner: Sequence[torch.Tensor] | None = None, seed: int = 0,
                    return_result: bool = False, rule: str = "residual", start: torch.Tensor | None = None):
    """The k largest Hessian eigenvalues of `loss_fn(model, batch)`, largest first (float64 tensor).

    Lanczos with a residual-based stopping rule (relative error <= tol; see `lanczos` for the
    "gap" default and the guaranteed "residual" rule), over every parameter with
    requires_grad (or `params`, which gives a diagonal block of the Hessian). `preconditioner` P
    (one positive tensor per parameter) gives the eigenvalues of P^{-1} H instead; see
    `adam_preconditioner`. `start`: warm start (a previous `LanczosResult.vector`). With
    return_result=True, returns the `LanczosResult` (products used, top Ritz vector)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    op = HessianOperator(model, loss_fn, batch, params, preconditioner)
    result = operator_top_eigenvalues(op, k=k, tol=tol, max_iter=max_iter, seed=seed, rule=rule, start=start)
    return result if return_result else result.eigenvalues



def operator_top_eigenvalues(op: HessianOperator, k: int = 1, tol: float = 1e-3, max_iter: int = 100,
                             seed: int = 0, rule: str = "residual",
                             start: torch.Tensor | None = None) -> LanczosResult:
    """Lanczos on an already-built `HessianOperator` (see `top_eigenvalues`). `start`: a flat start
    vector, e.g. the previous check's `LanczosResult.vector` (the Hessian drifts slowly in training,
    so a warm start needs fewer products); a little noise is mixed in so that no direction is missed."""
    generator = torch.Generator().manual_seed(seed)
    noise = op.random_vector(generator)
    if start is None or start.numel() != op.numel:
        return lanczos(op, op.numel, k=k, tol=tol, max_iter=max_iter, start=noise, rule=rule)
    start = start.to(device=op.device, dtype=op.dtype)
    start = start / torch.linalg.vector_norm(start) + 0.1 * noise / torch.linalg.vector_norm(noise)
    return lanczos(op, op.numel, k=k, tol=tol, max_iter=max_iter, start=start, rule=rule)



def power_iteration(model: nn.Module, loss_fn: LossFn, batch, max_iter: int = 100, tol: float = 1e-3,
                    seed: int = 0, params: Sequence[torch.Tensor] | None = None) -> tuple[float, int, list[float]]:
    """PyHessian's top-eigenvalue method and defaults (Yao et al. 2020, pyhessian/hessian.py): power
    iteration, Rayleigh quotient, stop when the relative change is below tol, at most max_iter
    products. Kept as the baseline for benchmarks. Returns (eigenvalue, products, history)."""
    op = HessianOperator(model, loss_fn, batch, params)
    generator = torch.Generator().manual_seed(seed)
    v = op.random_vector(generator)
    v = v / torch.linalg.vector_norm(v)
    eigenvalue, history = None, []
    for _ in range(max_iter):
        hv = op(v)
        estimate = float(torch.dot(hv, v))
        history.append(estimate)
        v = hv / torch.linalg.vector_norm(hv)
        # PyHessian: abs(eigenvalue - tmp) / (abs(eigenvalue) + 1e-6) < tol
        if eigenvalue is not None and abs(eigenvalue - estimate) / (abs(eigenvalue) + 1e-6) < tol:
            eigenvalue = estimate
            break
        eigenvalue = estimate
    return float(eigenvalue), op.products, history
