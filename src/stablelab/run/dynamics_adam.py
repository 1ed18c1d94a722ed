"""Adam-side runs of `stablelab sgd-stability`: full-batch Adam at the edge of stability (section 3)
and preconditioned sharpness during warm-up on the reference transformer (section 5).

Both read Adam's preconditioned sharpness: lambda_max of P^-1 H with P = (1 - beta1^t)(sqrt(v_hat) +
eps), Adam's own state (signals.curvature.adam_preconditioner), against the threshold (2 + 2 beta1) /
((1 - beta1) lr) (Cohen et al. 2022; 38/lr at beta1 = 0.9), with lr the learning rate of that step."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stablelab.data.digits import load_digits
from stablelab.models.mlp import MLP
from stablelab.models.transformer import Transformer, TransformerConfig
from stablelab.run.loop import finished_result, open_run, train_loop
from stablelab.run.schedule import warmup_cosine
from stablelab.signals.curvature import adam_preconditioner, adam_threshold, top_eigenvalues


def digits_mse(model: nn.Module, batch) -> torch.Tensor:
    # Cohen et al. 2021/2022: 0.5 * squared error to the one-hot target, summed over classes, mean over samples.
    x, y = batch
    return 0.5 * (model(x) - F.one_hot(y, 10).to(x.dtype)).pow(2).sum(1).mean()


def digits_cross_entropy(model: nn.Module, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


ADAM_LOSSES = {"mse": digits_mse, "cross_entropy": digits_cross_entropy}


def digits_subset(n: int, label_noise: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n digits training images; a fraction label_noise of them gets a random label
    (drawn from a private generator) so that cross-entropy cannot fit the set in a few hundred steps."""
    data = load_digits(seed=seed)
    x, y = data.x_train[:n], data.y_train[:n].clone()
    if label_noise > 0:
        g = torch.Generator().manual_seed(seed + 1)
        flip = torch.rand(len(y), generator=g) < label_noise
        y[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
    return x, y


def preconditioned_sharpness(model: nn.Module, loss_fn, batch, optimizer: torch.optim.Optimizer,
                             warm: dict, tol: float = 1e-3, seed: int = 0) -> float | None:
    """lambda_max(P^-1 H) under Adam's current preconditioner (None before Adam's first step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    precond = adam_preconditioner(optimizer, params)
    if precond is None:
        return None
    result = top_eigenvalues(model, loss_fn, batch, tol=tol, preconditioner=precond, seed=seed,
                             return_result=True, start=warm.get("vector"))
    warm["vector"] = result.vector
    return float(result.eigenvalues[0])


def adam_edge_run(loss_name: str, lr: float, *, steps: int, check_every: int, n: int = 512,
                  label_noise: float = 0.0, width: int = 64, beta1: float = 0.9, beta2: float = 0.999,
                  eps: float = 1e-7, seed: int = 0, run_dir: str | Path | None = None, advance=None) -> dict:
    """Full-batch Adam on a tanh MLP 64-width-width-10 over n digits images; preconditioned sharpness
    every check_every steps. Cohen et al. 2022 use beta2 0.999 and eps 1e-7 for their full-batch runs."""
    config = {"kind": "adam_edge", "loss": loss_name, "lr": lr, "steps": steps, "check_every": check_every, "n": n,
              "label_noise": label_noise, "width": width, "beta1": beta1, "beta2": beta2, "eps": eps, "seed": seed}
    finished = finished_result(run_dir, config, advance, steps)
    if finished is not None:
        return finished
    batch = digits_subset(n, label_noise, seed)
    loss_fn = ADAM_LOSSES[loss_name]
    torch.manual_seed(seed)
    model = MLP(64, 10, hidden=(width, width), bias=True, activation="tanh")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(beta1, beta2), eps=eps)
    threshold = adam_threshold(lr, beta1)
    record = {"loss": loss_name, "lr": lr, "label_noise": label_noise, "n": n, "threshold": threshold,
              "steps": [], "preconditioned_sharpness": [], "ratio": [], "train_loss": []}
    warm: dict = {}

    def on_log(step: int, loss: torch.Tensor) -> dict | None:
        value = preconditioned_sharpness(model, loss_fn, batch, optimizer, warm, seed=seed)
        if value is None:
            return None
        row = {"step": step, "preconditioned_sharpness": value, "ratio": value / threshold,
               "train_loss": float(loss.detach())}
        for key in ("steps", "preconditioned_sharpness", "ratio", "train_loss"):
            record[key].append(row["step" if key == "steps" else key])
        return row

    start = time.perf_counter()
    writer = open_run(run_dir, config)
    loop = train_loop(steps, lambda step: loss_fn(model, batch), optimizer, log_every=check_every, on_log=on_log,
                      finite_every=10, writer=writer, advance=advance, diverge_on=("preconditioned_sharpness",))
    record["diverged"] = loop.diverged
    record["seconds"] = time.perf_counter() - start
    if writer is not None:
        writer.finish(record)
    return record


def byte_batches(n_batches: int, batch_size: int, seq_len: int,
                 seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed next-byte batches from this package's own source files (offline, a few hundred kB): the
    warm-up runs cycle through them, so every run sees the same data in the same order."""
    root = Path(__file__).resolve().parents[1]
    text = b"".join(p.read_bytes() for p in sorted(root.rglob("*.py")))
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=g)
        window = data[starts[:, None] + torch.arange(seq_len + 1)[None, :]]
        out.append((window[:, :-1], window[:, 1:]))
    return out


def lm_loss(model: nn.Module, batch) -> torch.Tensor:
    tokens, targets = batch
    logits = model(tokens)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def lm_loss_twice_differentiable(model: nn.Module, batch) -> torch.Tensor:
    """lm_loss through the math attention kernel: the fused CPU kernel has no double backward, which
    Hessian-vector products need."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        return lm_loss(model, batch)


def warmup_run(lr: float, warmup_steps: int, *, steps: int, check_steps: int, check_every: int,
               d_model: int = 64, n_layers: int = 2, seq_len: int = 32, batch_size: int = 16,
               beta1: float = 0.9, beta2: float = 0.95, seed: int = 0, spike_factor: float = 1.5,
               run_dir: str | Path | None = None, advance=None) -> dict:
    """Adam (betas 0.9, 0.95, the proxies paper's) on the reference transformer with linear warm-up
    then cosine decay (run.schedule.warmup_cosine); preconditioned sharpness on a fixed batch every
    check_every steps during the first check_steps, against 38/lr(t) with lr(t) that step's rate.
    'unstable' = diverged, or the loss after step 10 rose above spike_factor x its running minimum."""
    config = {"kind": "warmup_curvature", "lr": lr, "warmup_steps": warmup_steps, "steps": steps,
              "check_steps": check_steps, "check_every": check_every, "d_model": d_model, "n_layers": n_layers,
              "seq_len": seq_len, "batch_size": batch_size, "beta1": beta1, "beta2": beta2, "seed": seed,
              "spike_factor": spike_factor}
    finished = finished_result(run_dir, config, advance, steps)
    if finished is not None:
        return finished
    batches = byte_batches(64, batch_size, seq_len, seed)
    probe = batches[0]
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(seq_len=seq_len, d_model=d_model, n_layers=n_layers, d_head=16))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(beta1, beta2), eps=1e-8)
    lr_at = lambda step: warmup_cosine(step, lr, max(1, warmup_steps), steps)  # noqa: E731
    record = {"lr": lr, "warmup_steps": warmup_steps, "check_steps": [], "lr_at_check": [], "ratio": [],
              "preconditioned_sharpness": [], "losses": []}
    warm: dict = {}

    def on_log(step: int, loss: torch.Tensor) -> dict | None:
        record["losses"].append(float(loss.detach()))
        if step >= check_steps or step % check_every:
            return None
        value = preconditioned_sharpness(model, lm_loss_twice_differentiable, probe, optimizer, warm, tol=1e-2,
                                         seed=seed)
        if value is None:
            return None
        now = float(optimizer.param_groups[0]["lr"])
        ratio = value / adam_threshold(now, beta1)
        for key, v in (("check_steps", step), ("lr_at_check", now), ("ratio", ratio),
                       ("preconditioned_sharpness", value)):
            record[key].append(v)
        return {"step": step, "lr": now, "preconditioned_sharpness": value, "ratio": ratio}

    start = time.perf_counter()
    writer = open_run(run_dir, config)
    loop = train_loop(steps, lambda step: lm_loss(model, batches[step % len(batches)]), optimizer, log_every=1,
                      on_log=on_log, finite_every=1, writer=writer, advance=advance, lr_at=lr_at)
    losses = record["losses"]
    running, spiked = math.inf, False
    for i, value in enumerate(losses):
        if i > 10 and value > spike_factor * running:
            spiked = True
        running = min(running, value)
    record.update({"diverged": loop.diverged, "unstable": loop.diverged or spiked,
                   "final_loss": losses[-1] if losses else float("nan"),
                   "max_ratio": max(record["ratio"], default=float("nan")),
                   "seconds": time.perf_counter() - start})
    if writer is not None:
        writer.finish(record)
    return record
