"""Runs of the dynamical-stability study (`stablelab sgd-stability`, section 2): GD or SGD on a small
model trained to interpolation through stablelab.run.loop, then curvature at the reached minimum.

The loop runs in chunks of `check_every` steps; after each chunk the full training loss is read, and
the run stops once it is below `target_loss` (or diverges, or reaches `max_steps`). At the end:
lambda_max (Lanczos) and trace(H) (Hutch++) of the full-batch loss, the model's norm, the test
error, and the two stability ratios lr * trace / 2 (SGD, Wu & Su 2023) and lr * lambda_max / 2 (GD,
Cohen et al. 2021), both at most about 1 at a linearly stable minimum."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from stablelab.data.synthetic import Regression
from stablelab.models.dynamics import half_mse
from stablelab.run.loop import finished_result, open_run, train_loop
from stablelab.signals.curvature import hessian_trace, top_eigenvalues


def minibatch_sampler(n: int, batch_size: int, seed: int) -> Callable[[], torch.Tensor]:
    """Indices of the next minibatch: reshuffle each epoch, batches without replacement within it."""
    generator = torch.Generator().manual_seed(seed)
    state = {"order": torch.randperm(n, generator=generator), "position": 0}

    def next_batch() -> torch.Tensor:
        if state["position"] + batch_size > n:
            state["order"], state["position"] = torch.randperm(n, generator=generator), 0
        index = state["order"][state["position"]: state["position"] + batch_size]
        state["position"] += batch_size
        return index

    return next_batch


def train_to_interpolation(model: nn.Module, data: Regression, lr: float, batch_size: int, *,
                           max_steps: int = 20000, target_loss: float = 1e-7, check_every: int = 250,
                           seed: int = 0, advance=None) -> dict:
    """Plain SGD (batch_size < n) or GD (batch_size >= n) on `half_mse` until the full training loss
    is below target_loss. Returns steps, train_loss, diverged and the loss every check."""
    n = len(data.y_train)
    batch_size = min(batch_size, n)
    next_batch = minibatch_sampler(n, batch_size, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    full = (data.x_train, data.y_train)
    history, steps, diverged = [], 0, False

    def compute_loss(step: int) -> torch.Tensor:
        if batch_size == n:
            return half_mse(model, full)
        index = next_batch()
        return half_mse(model, (data.x_train[index], data.y_train[index]))

    while steps < max_steps:
        chunk = min(check_every, max_steps - steps)
        loop = train_loop(chunk, compute_loss, optimizer, finite_every=10, advance=advance)
        steps += loop.steps_done
        with torch.no_grad():
            loss = float(half_mse(model, full))
        history.append((steps, loss))
        if loop.diverged or not math.isfinite(loss) or loss > 1e12:
            diverged = True
            break
        if loss < target_loss:
            break
    if advance is not None and steps < max_steps:
        advance(max_steps - steps)  # the bar counts the budget, not the steps taken
    return {"steps": steps, "train_loss": history[-1][1] if history else float("nan"), "diverged": diverged,
            "loss_steps": [s for s, _ in history], "loss_history": [v for _, v in history]}


def measure_minimum(model: nn.Module, data: Regression, lr: float, *, trace_products: int = 90,
                    tol: float = 1e-4, seed: int = 0) -> dict:
    """Curvature, norm and test error at the reached point."""
    full = (data.x_train, data.y_train)
    lam = float(top_eigenvalues(model, half_mse, full, tol=tol, seed=seed)[0])
    trace = hessian_trace(model, half_mse, full, n_products=trace_products, seed=seed)
    with torch.no_grad():
        test_error = float(half_mse(model, (data.x_test, data.y_test)))
    return {"lambda_max": lam, "trace": trace,
            # Wu & Su 2023: a linearly stable SGD minimum has trace(H) <= 2/lr, i.e. this <= 1.
            "lr_trace_over_2": lr * trace / 2,
            # Cohen et al. 2021: GD is linearly stable only if lambda_max <= 2/lr, i.e. this <= 1.
            "lr_lambda_over_2": lr * lam / 2,
            "norm": parameter_norm(model), "test_error": test_error}


def parameter_norm(model: nn.Module) -> float:
    """The model's own norm (`model.norm()`, the one Wu & Su tie to the trace) or, for a model without
    one (the MLP), the l2 norm of all its parameters."""
    if hasattr(model, "norm") and callable(model.norm):
        return float(model.norm())
    return float(torch.sqrt(sum(p.detach().pow(2).sum() for p in model.parameters())))


def stability_run(model_name: str, make_model: Callable[[], nn.Module], data: Regression, lr: float,
                  batch_size: int, *, max_steps: int, target_loss: float, trace_products: int, seed: int,
                  confirm_steps: int = 0, run_dir: str | Path | None = None, advance=None,
                  fingerprint: dict | None = None) -> dict:
    """One row of the summary's "runs": train, then (once interpolated) go on for `confirm_steps` more
    steps of the same optimizer, so that a minimum SGD only passes through is not taken for one it
    stays at (`stayed`: the loss is still below 1e-6 after them), then measure; a store folder when
    run_dir is given (a finished one with the same configuration is read back)."""
    n = len(data.y_train)
    optimizer = "gd" if batch_size >= n else "sgd"
    config = {"kind": "sgd_stability", "model": model_name, "optimizer": optimizer, "batch_size": min(batch_size, n),
              "lr": lr, "max_steps": max_steps, "target_loss": target_loss, "trace_products": trace_products,
              "seed": seed, "confirm_steps": confirm_steps, **(fingerprint or {})}
    finished = finished_result(run_dir, config, advance, max_steps + confirm_steps)
    if finished is not None:
        return finished
    writer = open_run(run_dir, config)
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = make_model()
    trained = train_to_interpolation(model, data, lr, batch_size, max_steps=max_steps, target_loss=target_loss,
                                     seed=seed, advance=advance)
    row = {"model": model_name, "optimizer": optimizer, "batch_size": min(batch_size, n), "lr": lr,
           "train_loss": trained["train_loss"], "steps": trained["steps"], "diverged": trained["diverged"],
           "interpolated": (not trained["diverged"]) and trained["train_loss"] < 1e-6}
    if confirm_steps and row["interpolated"]:
        confirmed = train_to_interpolation(model, data, lr, batch_size, max_steps=confirm_steps, target_loss=0.0,
                                           check_every=confirm_steps, seed=seed + 1, advance=advance)
        row.update({"confirm_steps": confirm_steps, "train_loss_after_confirm": confirmed["train_loss"],
                    "stayed": (not confirmed["diverged"]) and confirmed["train_loss"] < 1e-6})
        trained["diverged"] = confirmed["diverged"]
    elif advance is not None:
        advance(confirm_steps)
    nan = float("nan")
    if trained["diverged"]:
        row.update({"lambda_max": nan, "trace": nan, "lr_trace_over_2": nan, "lr_lambda_over_2": nan,
                    "norm": nan, "test_error": nan})
    else:
        row.update(measure_minimum(model, data, lr, trace_products=trace_products, seed=seed))
        if optimizer == "sgd":
            # Batch-B form of the trace bound (docs/dynamics.md, derived there): lr * trace / (2B) <= 1.
            row["lr_trace_over_2B"] = lr * row["trace"] / (2 * row["batch_size"])
    row["seconds"] = time.perf_counter() - start
    if writer is not None:
        for s, v in zip(trained["loss_steps"], trained["loss_history"]):
            writer.log({"step": s, "train_loss": v})
        writer.finish(row)
        writer.close()
    return row
