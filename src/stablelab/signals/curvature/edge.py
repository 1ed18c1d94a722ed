"""The edge of stability: the thresholds 2/lr (GD) and (2 + 2 beta1) / ((1 - beta1) lr) (Adam), the
Adam preconditioner, per-layer blocks, and the scheduled sharpness check the monitor runs."""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from torch import nn

from stablelab.signals.curvature.eigenvalues import operator_top_eigenvalues, top_eigenvalues
from stablelab.signals.curvature.trace import operator_trace
from stablelab.signals.curvature.hessian import HessianOperator, LossFn


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
