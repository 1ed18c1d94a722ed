"""Two runs of `stablelab sgd-stability`: opposing signals with sharpness alongside (section 4) and
gradient descent on separable logistic regression at large step sizes (section 6)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from stablelab.data.synthetic import opposing_signals_classification, separable_classification
from stablelab.models.mlp import MLP
from stablelab.monitor.detectors import DETECTORS
from stablelab.monitor.opposing import OpposingSignalTracker
from stablelab.run.loop import finished_result, open_run, train_loop
from stablelab.signals.curvature import top_eigenvalues


def _one_hot_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Cohen et al. 2021: 0.5 * squared error to the one-hot target, per example.
    return 0.5 * (outputs - F.one_hot(targets, outputs.shape[1]).to(outputs.dtype)).pow(2).sum(1)


def opposing_run(lr: float, *, steps: int, check_every: int, window: int = 10, n: int = 400,
                 outlier_scale: float = 4.0, seed: int = 0, run_dir: str | Path | None = None, advance=None) -> dict:
    """Full-batch GD (one-hot MSE) on a tanh MLP 20-64-64-2 over data with a planted pair of opposing
    outlier groups (data.synthetic.opposing_signals_classification). Every check: sharpness (Lanczos),
    the two planted groups' mean losses, and the tracker's opposing-groups row, fed to the
    `opposing_signals` detector."""
    detector = DETECTORS["opposing_signals"](cooldown=check_every * window)
    config = {"kind": "opposing_signals", "lr": lr, "steps": steps, "check_every": check_every, "window": window,
              "n": n, "outlier_scale": outlier_scale, "seed": seed, "detector": detector.settings()}
    finished = finished_result(run_dir, config, advance, steps)
    if finished is not None:
        return finished
    x, y, group = opposing_signals_classification(n=n, d=20, outlier_scale=outlier_scale, seed=seed)
    x = x.float()
    torch.manual_seed(seed)
    model = MLP(20, 2, hidden=(64, 64), bias=True, activation="tanh")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = lambda m, batch: _one_hot_mse(m(batch[0]), batch[1]).mean()  # noqa: E731
    tracker = OpposingSignalTracker(lambda: _one_hot_mse(model(x), y), n_examples=n, subset=n, window=window)
    planted = set(torch.nonzero(group > 0).flatten().tolist())
    record = {"lr": lr, "gd_threshold": 2 / lr, "steps": [], "sharpness": [], "train_loss": [], "group_1_loss": [],
              "group_2_loss": [], "correlation": [], "amplitude": [], "planted_overlap": [], "events": []}
    warm: dict = {}

    def on_log(step: int, loss: torch.Tensor) -> dict:
        row = tracker.observe(step) or {}
        if step % check_every:
            return None
        result = top_eigenvalues(model, loss_fn, (x, y), return_result=True, start=warm.get("vector"), seed=seed)
        warm["vector"] = result.vector
        with torch.no_grad():
            per = _one_hot_mse(model(x), y)
        found = set(tracker.last_groups.get("group_a", []) + tracker.last_groups.get("group_b", []))
        values = {"steps": step, "sharpness": float(result.eigenvalues[0]), "train_loss": float(loss.detach()),
                  "group_1_loss": float(per[group == 1].mean()), "group_2_loss": float(per[group == 2].mean()),
                  "correlation": row.get("opposing_signals_correlation", float("nan")),
                  "amplitude": row.get("opposing_signals_amplitude", float("nan")),
                  "planted_overlap": len(found & planted) / max(1, len(found))}
        for key, value in values.items():
            record[key].append(value)
        for event in detector.check(step, row):
            record["events"].append({"step": step, "message": event.message})
        return {"step": step, **{k: v for k, v in values.items() if k != "steps"}}

    start = time.perf_counter()
    writer = open_run(run_dir, config)
    loop = train_loop(steps, lambda step: loss_fn(model, (x, y)), optimizer, log_every=1, on_log=on_log,
                      finite_every=1, writer=writer, advance=advance)
    record.update({"diverged": loop.diverged, "seconds": time.perf_counter() - start})
    if writer is not None:
        writer.finish(record)
    return record


def logistic_run(lr: float, *, steps: int, n: int = 40, minority: float = 0.1, margin: float = 0.1, seed: int = 0,
                 record_every: int = 1, run_dir: str | Path | None = None, advance=None) -> dict:
    """GD from w = 0 on L(w) = mean_i log(1 + exp(-y_i <w, x_i>)) over separable data (Wu, Bartlett,
    Telgarsky, Yu 2024, "Large stepsize GD for logistic loss"); the loss every record_every steps,
    how often it rose, and the first step with zero classification error."""
    config = {"kind": "logistic_gd", "lr": lr, "steps": steps, "n": n, "minority": minority, "margin": margin,
              "seed": seed}
    finished = finished_result(run_dir, config, advance, steps)
    if finished is not None:
        return finished
    x, y = separable_classification(n=n, minority=minority, margin=margin, seed=seed)
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=lr)
    state = {"zero_error_step": None, "losses": [], "record_steps": [], "increases": 0, "previous": None}

    def compute_loss(step: int) -> torch.Tensor:
        margins = y * (x @ w)
        loss = F.softplus(-margins).mean()  # log(1 + exp(-m)), computed without overflow
        value = float(loss.detach())
        if state["zero_error_step"] is None and bool((margins.detach() > 0).all()):
            state["zero_error_step"] = step
        if state["previous"] is not None and value > state["previous"]:
            state["increases"] += 1
        state["previous"] = value
        if step % record_every == 0:
            state["losses"].append(value)
            state["record_steps"].append(step)
        return loss

    start = time.perf_counter()
    loop = train_loop(steps, compute_loss, optimizer, finite_every=50, advance=advance)
    losses = state["losses"]
    record = {"lr": lr, "steps": steps, "record_steps": state["record_steps"], "losses": losses,
              "loss_increases": state["increases"], "monotone": state["increases"] == 0,
              "zero_error_step": state["zero_error_step"], "final_loss": state["previous"],
              "max_loss": max(losses) if losses else math.nan, "diverged": loop.diverged,
              "seconds": time.perf_counter() - start}
    writer = open_run(run_dir, config)
    if writer is not None:
        writer.finish(record)
    return record
