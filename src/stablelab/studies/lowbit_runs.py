"""The low-bit study's runs: a binary MLP on digits, and reference-transformer runs at fp32 or fake-quantised.

Each run is one store folder; a finished folder made with the same configuration is read back.
The transformer runs go through the proxy study's public `run.proxy_run.train` (its recipe: warm-up
and cosine decay, global-norm clip 1, independent weight decay, z-loss per variant); quantised runs
pass a `model_fn` that fake-quantises the reference model (`nn.quantize_model`, the output head in
full precision).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stablelab.nn import BinaryLinear, quantize_model, reste_o_schedule, set_reste_o
from stablelab.run.loop import open_run, read_finished, train_loop
from stablelab.run.proxy_run import ProxyRunConfig, train
from stablelab.signals import estimating_error, gradient_stability
from stablelab.store.run_store import is_done, load_config, load_metrics, load_result

BINARY_BATCH = 64


# -- binary MLP on digits ----------------------------------------------------------------------
def binary_mlp(hidden: int, estimator: str) -> torch.nn.Sequential:
    """64 -> hidden (full precision) -> 2 binary layers (1W1A, per-channel alpha) -> 10 (full precision),
    BatchNorm before each binarisation (the official ReSTE models keep first and last layers real)."""
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.BatchNorm1d(hidden),
        BinaryLinear(hidden, hidden, estimator=estimator), torch.nn.BatchNorm1d(hidden),
        BinaryLinear(hidden, hidden, estimator=estimator), torch.nn.BatchNorm1d(hidden),
        torch.nn.Linear(hidden, 10))


def binary_run(s, estimator: str, o: float, seed: int, root: Path, device: str) -> dict[str, Any]:
    """One binary MLP: Adam, `s.binary_epochs` epochs of batches of 64; ReSTE's o annealed 1 -> o by
    `reste_o_schedule` at each epoch start. Returns {"estimator", "o", "seed", "test_acc",
    "train_acc", "estimating_error" (latent weights of the binary layers at o), "gradient_stability"
    (mean over steps of sum_l Var(|grad w_l|))}."""
    from stablelab.data.digits import load_digits

    config = {"estimator": estimator, "o": float(o), "seed": seed, "epochs": s.binary_epochs,
              "hidden": s.binary_hidden, "lr": s.binary_lr, "batch_size": BINARY_BATCH, "device": device}
    run_dir = root / f"{estimator}_o{o:g}_s{seed}"
    finished = read_finished(run_dir, config)
    if finished is not None:
        return finished[0]
    data = load_digits()
    dev = torch.device(device)
    x_train, y_train = data.x_train.to(dev), data.y_train.to(dev)
    torch.manual_seed(seed)
    model = binary_mlp(s.binary_hidden, estimator).to(dev)
    binary = [m.weight for m in model if isinstance(m, BinaryLinear)]
    optimizer = torch.optim.Adam(model.parameters(), lr=s.binary_lr)
    per_epoch = math.ceil(len(x_train) / BINARY_BATCH)
    generator = torch.Generator().manual_seed(seed)
    order: dict[str, torch.Tensor] = {}
    stability: list[torch.Tensor] = []

    def compute_loss(step: int):
        epoch, i = divmod(step, per_epoch)
        if i == 0:
            order["perm"] = torch.randperm(len(x_train), generator=generator).to(dev)
            if estimator == "reste":  # official main.py: o set once per epoch
                set_reste_o(model, reste_o_schedule(epoch, s.binary_epochs, o))
        pick = order["perm"][i * BINARY_BATCH:(i + 1) * BINARY_BATCH]
        return F.cross_entropy(model(x_train[pick]), y_train[pick])

    def before_update(step: int) -> None:
        stability.append(gradient_stability([w.grad for w in binary]))

    writer = open_run(run_dir, config)
    try:
        loop = train_loop(s.binary_epochs * per_epoch, compute_loss, optimizer, log_every=per_epoch,
                          on_log=lambda step, loss: {"step": step, "loss": float(loss.detach())},
                          writer=writer, before_update=before_update, finite_every=0)
        model.eval()
        with torch.no_grad():
            test_acc = (model(data.x_test.to(dev)).argmax(1) == data.y_test.to(dev)).float().mean().item()
            train_acc = (model(x_train).argmax(1) == y_train).float().mean().item()
        result = {"estimator": estimator, "o": float(o), "seed": seed, "test_acc": test_acc, "train_acc": train_acc,
                  "estimating_error": float(estimating_error(binary, o)),
                  "gradient_stability": float(torch.stack(stability).mean()) if stability else float("nan"),
                  "diverged": loop.diverged, "seconds": loop.seconds}
    finally:
        writer.close()
    writer.finish(result)
    return result


# -- reference transformer runs ----------------------------------------------------------------
def proxy_config(s, optimizer: str, precision: str, lr: float, seed: int, device: str) -> ProxyRunConfig:
    """The run's ProxyRunConfig; a quantised run is model "custom" with its bits and group in the tag."""
    quantised = precision != "fp32"
    tag = f"_w{s.weight_bits}a{s.activation_bits}g{s.group_size}" if quantised else ""
    return ProxyRunConfig(width=s.width, depth=s.depth, lr=lr, seed=seed, steps=s.steps, optimizer=optimizer,
                          model="custom" if quantised else "reference", tag=tag,
                          log_every=max(1, s.steps // 20), device=device, threads=0)


def build_proxy_model(config: ProxyRunConfig) -> torch.nn.Module:
    """The reference transformer of `config` (float32)."""
    return replace(config, model="reference", precision="fp32").build()


def _same_config(run_dir: Path, config: ProxyRunConfig) -> bool:
    if not is_done(run_dir):
        return False
    stored = load_config(run_dir)
    return all(stored.get(k) == v for k, v in config.to_dict().items() if k not in ("extra", "threads"))


def proxy_run(s, optimizer: str, precision: str, lr: float, seed: int, root: Path, device: str) -> dict[str, Any]:
    """One reference-transformer run (trained, or read back when finished with the same config).

    Returns {"optimizer", "precision", "lr", "seed", "final_loss", "init_loss", "diverged",
    "steps", "losses", "grad_norms"} (train cross-entropy and global gradient norm per logged step)."""
    config = proxy_config(s, optimizer, precision, lr, seed, device)
    run_dir = root / config.run_id
    if not _same_config(run_dir, config):
        model_fn = None
        if precision != "fp32":
            def model_fn(width, depth, variant):
                return quantize_model(build_proxy_model(config), weight_bits=s.weight_bits,
                                      activation_bits=s.activation_bits, group_size=s.group_size,
                                      exclude=("head",))
        train(config, run_dir, model_fn=model_fn)
    result, rows = load_result(run_dir), load_metrics(run_dir)
    return {"run_id": config.run_id, "optimizer": optimizer, "precision": precision, "lr": lr, "seed": seed,
            "final_loss": result["final_loss"], "init_loss": result["init_loss"],
            "diverged": bool(result["diverged"]), "wall_s": result.get("wall_s"),
            "steps": [r["step"] for r in rows], "losses": [r.get("loss") for r in rows],
            "grad_norms": [r.get("grad_norm") for r in rows]}


def state_bytes_per_parameter(s) -> dict[str, float]:
    """Optimizer state bytes per parameter of the study's reference model after one step:
    float32 AdamW (exp_avg, exp_avg_sq) and the 8-bit optimizers (codes, absmax, float32 moments
    of tensors under 4096 elements, 0-d statistics)."""
    from stablelab.optim import create

    config = proxy_config(s, "adamw", "fp32", 1e-3, 0, "cpu")
    out = {}
    for key, name in (("fp32", "adamw"), ("8bit", "adamw8bit"), ("stable_spam8bit", "stable_spam8bit"),
                      ("ademamix8bit", "ademamix8bit"), ("ademamix_fp32", "ademamix")):
        torch.manual_seed(0)
        model = build_proxy_model(config)
        optimizer = create(name, model.parameters(), lr=1e-3)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        optimizer.step()
        numel = sum(p.numel() for p in optimizer.state)
        held = sum(t.numel() * t.element_size() for entry in optimizer.state.values()
                   for k, t in entry.items() if torch.is_tensor(t) and k != "step")
        out[key] = held / numel
    return out
