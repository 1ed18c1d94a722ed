"""Curvature instruments: Hessian-vector products, top eigenvalues (Lanczos), trace (Hutchinson,
Hutch++), the Adam-preconditioned Hessian, per-layer blocks, and a scheduled sharpness check.

Every function here is a side-effect-free read of the model:
- the model's train/eval flags are left as they are (the Hessian is of the loss the caller trains on),
- parameters' `.grad` is never touched (products use `torch.autograd.grad`, which does not accumulate),
- the global RNG streams (CPU and the model's CUDA devices) are restored after the loss is evaluated,
  and probe vectors come from a private `torch.Generator`, so training's random stream is unchanged,
- buffers (e.g. BatchNorm running statistics) are restored after the forward pass.

`loss_fn(model, batch)` must return the scalar loss. The Hessian is built once per call (one forward
and one backward with `create_graph=True`); each product is then one double-backward pass.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

LossFn = Callable[[nn.Module, object], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# The Hessian as a linear operator on flat vectors


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Run a block that evaluates the model without leaving a trace: RNG streams and buffers are
    restored on exit, train/eval flags are put back as they were, and grad mode is on."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [m.training for m in model.modules()]
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        try:
            yield
        finally:
            with torch.no_grad():
                for live, saved in buffers:
                    if not torch.equal(live, saved):
                        # Through .data: no version bump, so the graph built above stays usable
                        # (train-mode BatchNorm saves its running stats but does not use them).
                        live.data.copy_(saved)
            for module, mode in zip(model.modules(), modes):
                module.training = mode  # a loss_fn that switched modes must not leak it


def _trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


class HessianOperator:
    """v -> H v for the Hessian of `loss_fn(model, batch)` with respect to `params` (default: every
    parameter with requires_grad), on flat vectors. With `preconditioner` P (a diagonal, one tensor
    per parameter), the operator is the symmetric P^{-1/2} H P^{-1/2}, which has the eigenvalues of
    P^{-1} H (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability")."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, batch, params: Sequence[torch.Tensor] | None = None,
                 preconditioner: Sequence[torch.Tensor] | None = None):
        self.params = list(params) if params is not None else _trainable(model)
        if not self.params:
            raise ValueError("no parameters with requires_grad")
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.numel = sum(self.sizes)
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype if self.params[0].is_floating_point() else torch.float32
        self.products = 0
        with preserved_state(model):
            self.loss = loss_fn(model, batch)
            if self.loss.dim() != 0:
                raise ValueError("loss_fn must return a scalar loss")
            grads = torch.autograd.grad(self.loss, self.params, create_graph=True, allow_unused=True)
        # Gradients that are constant in the parameters have no graph: their Hessian rows are zero.
        self._live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self._grads = [grads[i] for i in self._live]
        self.gradient = self.flatten([g.detach() if g is not None else None for g in grads])
        self.set_preconditioner(preconditioner)

    def set_preconditioner(self, preconditioner: Sequence[torch.Tensor] | None) -> None:
        """Switch to P^{-1/2} H P^{-1/2} (None: plain H) without rebuilding the gradient graph."""
        # P^{-1/2}, flattened; P must be positive (Adam's sqrt(v_hat) + eps is).
        self._scale = None if preconditioner is None else self.flatten(
            [p.detach().to(self.dtype).rsqrt() for p in preconditioner])

    def flatten(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        parts = [
            (t.reshape(-1) if t is not None else torch.zeros(n, device=self.device, dtype=self.dtype))
            for t, n in zip(tensors, self.sizes)
        ]
        return torch.cat(parts).to(self.dtype)

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        return [chunk.view(shape) for chunk, shape in zip(vector.split(self.sizes), self.shapes)]

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        """H v (or P^{-1/2} H P^{-1/2} v) for a flat vector v; counts one Hessian-vector product."""
        self.products += 1
        if self._scale is not None:
            vector = vector * self._scale
        out = [torch.zeros_like(p) for p in self.params]
        if self._grads:
            pieces = self.unflatten(vector.to(self.dtype))
            # Pearlmutter's trick: H v = d/dw <grad L(w), v> (double backward, Pearlmutter 1994).
            hv = torch.autograd.grad(self._grads, self.params, grad_outputs=[pieces[i] for i in self._live],
                                     retain_graph=True, allow_unused=True)
            out = [h if h is not None else z for h, z in zip(hv, out)]
        result = self.flatten([h.detach() for h in out])
        if self._scale is not None:
            result = result * self._scale
        return result

    def random_vector(self, generator: torch.Generator, kind: str = "gaussian") -> torch.Tensor:
        """Probe vector drawn from a private CPU generator (same numbers on every device)."""
        if kind == "rademacher":
            v = torch.randint(0, 2, (self.numel,), generator=generator).to(self.dtype) * 2 - 1
        else:
            v = torch.randn(self.numel, generator=generator, dtype=torch.float64).to(self.dtype)
        return v.to(self.device)


def hessian_vector_product(model: nn.Module, loss_fn: LossFn, batch, vector: Sequence[torch.Tensor],
                           params: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """H v with v given per parameter (a list shaped like the parameters); returns H v the same way."""
    op = HessianOperator(model, loss_fn, batch, params)
    return op.unflatten(op(op.flatten(list(vector))))


# ----------------------------------------------------------------------------------------------
# Eigenvalues


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


# ----------------------------------------------------------------------------------------------
# Trace


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


# ----------------------------------------------------------------------------------------------
# Adam, per-layer blocks, thresholds, the scheduled check


def adam_preconditioner(optimizer: torch.optim.Optimizer,
                        params: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    """Adam's diagonal preconditioner P = (1 - beta1^t) (sqrt(v_t / (1 - beta2^t)) + eps), one tensor
    per parameter (Cohen et al. 2022, eq. for Adam's P_t). None when any parameter has no Adam
    state yet (before the first step) or the optimizer keeps no `exp_avg_sq`."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out = []
    for p in params:
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state or id(p) not in group_of:
            return None
        group = group_of[id(p)]
        beta1, beta2 = group["betas"][:2]
        step = float(state["step"])
        v_hat = state["exp_avg_sq"].detach() / (1 - beta2 ** step)
        out.append((1 - beta1 ** step) * (v_hat.sqrt() + group["eps"]))
    return out


def gd_threshold(lr: float) -> float:
    """2 / lr: gradient descent is linearly stable only if lambda_max <= 2 / lr (Cohen et al. 2021);
    also the bound on trace(H) for a linearly stable SGD minimum (Wu & Su 2023)."""
    return 2.0 / lr


def adam_threshold(lr: float, beta1: float) -> float:
    """(2 + 2 beta1) / ((1 - beta1) lr): where Adam's preconditioned sharpness hovers (Cohen et al.
    2022); 38 / lr for beta1 = 0.9."""
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


def layer_top_eigenvalues(model: nn.Module, loss_fn: LossFn, batch, tol: float = 1e-3,
                          max_iter: int = 100, seed: int = 0) -> dict[str, float]:
    """Top eigenvalue of each module's diagonal Hessian block (its own trainable parameters)."""
    out = {}
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if params:
            values = top_eigenvalues(model, loss_fn, batch, tol=tol, max_iter=max_iter, params=params, seed=seed)
            out[name or "(root)"] = float(values[0])
    return out


def sharpness_check(model: nn.Module, loss_fn: LossFn, batch, lr: float | None = None,
                    optimizer: torch.optim.Optimizer | None = None, tol: float = 1e-3,
                    trace_products: int = 30, max_iter: int = 100, edge_margin: float = 0.1,
                    seed: int = 0, warm_start: dict | None = None) -> dict:
    """One scheduled curvature reading for the monitor (call it every N steps).

    Returns a flat dict:
    - lambda_max: top Hessian eigenvalue (Lanczos, relative error <= tol); trace: Hutch++ estimate
      with `trace_products` products (0 skips it, trace = None);
    - gd_threshold = 2/lr, sharpness_ratio = lambda_max / (2/lr), trace_ratio = trace / (2/lr);
    - edge_of_stability: lambda_max >= (1 - edge_margin) * 2/lr (the event to emit);
    - when `optimizer` holds Adam state (exp_avg_sq): preconditioned_lambda_max = lambda_max of
      P^{-1} H with Adam's P, beta1, adam_threshold = (2 + 2 beta1) / ((1 - beta1) lr) (38/lr at
      beta1 0.9), adam_ratio; edge_of_stability is then adam_ratio >= 1 - edge_margin instead;
    - loss (at the checked batch);
    - products (Hessian-vector products used) and seconds (wall time).
    `lr` defaults to the optimizer's first param group's lr. The model's mode, `.grad` and the global
    RNG are left unchanged. Pass the same dict as `warm_start` to every scheduled call: it keeps the
    last top eigenvectors and starts Lanczos from them (fewer products when the Hessian drifts slowly)."""
    if lr is None:
        if optimizer is None:
            raise ValueError("sharpness_check needs lr or an optimizer")
        lr = float(optimizer.param_groups[0]["lr"])
    start = time.perf_counter()
    op = HessianOperator(model, loss_fn, batch)  # built once, shared by eigenvalue and trace
    warm = warm_start if warm_start is not None else {}
    eig = operator_top_eigenvalues(op, k=1, tol=tol, max_iter=max_iter, seed=seed, start=warm.get("vector"))
    warm["vector"] = eig.vector
    lambda_max = float(eig.eigenvalues[0])
    trace = operator_trace(op, trace_products, seed=seed) if trace_products > 0 else None
    threshold = gd_threshold(lr)
    out = {
        "loss": float(op.loss.detach()), "lambda_max": lambda_max, "trace": trace, "lr": lr,
        "gd_threshold": threshold, "sharpness_ratio": lambda_max / threshold,
        "trace_ratio": None if trace is None else trace / threshold,
        "edge_of_stability": bool(math.isfinite(lambda_max) and lambda_max >= (1 - edge_margin) * threshold),
    }
    precond = adam_preconditioner(optimizer, op.params) if optimizer is not None else None
    if precond is not None:
        # Under Adam the raw sharpness may exceed 2/lr freely; the preconditioned one is what hovers.
        op.set_preconditioner(precond)
        pre = operator_top_eigenvalues(op, k=1, tol=tol, max_iter=max_iter, seed=seed,
                                       start=warm.get("preconditioned_vector"))
        warm["preconditioned_vector"] = pre.vector
        beta1 = float(optimizer.param_groups[0]["betas"][0])
        a_threshold = adam_threshold(lr, beta1)
        pre_max = float(pre.eigenvalues[0])
        out.update({
            "preconditioned_lambda_max": pre_max, "beta1": beta1, "adam_threshold": a_threshold,
            "adam_ratio": pre_max / a_threshold,
            "edge_of_stability": bool(math.isfinite(pre_max) and pre_max >= (1 - edge_margin) * a_threshold),
        })
    out["products"] = op.products
    out["seconds"] = time.perf_counter() - start
    return out


__all__ = [
    "HessianOperator", "LanczosResult", "adam_preconditioner", "adam_threshold", "gd_threshold",
    "hessian_trace", "hessian_vector_product", "lanczos", "layer_top_eigenvalues", "operator_top_eigenvalues",
    "operator_trace", "power_iteration",
    "preserved_state", "sharpness_check", "top_eigenvalues",
]
