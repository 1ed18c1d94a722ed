"""`stablelab eos`: edge of stability on a small MLP (Cohen et al. 2021, arXiv 2103.00065).

Full-batch gradient descent on scikit-learn digits (MSE and cross-entropy) at several learning
rates; the top Hessian eigenvalue (sharpness) is measured every few steps with Lanczos and plotted
against 2/lr: it rises (progressive sharpening), reaches 2/lr and hovers there. Then minibatch SGD,
whose trace(H) at the end is compared with 2/lr (Wu & Su 2023: a linearly stable SGD minimum has
trace(H) <= 2/lr), beside full-batch GD at the same LR.

Every run trains through stablelab.run.loop and is one store folder under --out/runs (a finished run
with the same configuration is read back on a rerun). Outputs in --out: report.html
(self-contained), summary.json, sharpness.png, runs/.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stablelab.data.digits import Digits, load_digits
from stablelab.config import Runtime, csv, non_negative, positive, setting
from stablelab.models.mlp import MLP
from stablelab.run.loop import open_run, read_finished, train_loop
from stablelab.run.progress import progress_bar
from stablelab.run.runtime import threads_scope
from stablelab.studies.command import Command
from stablelab.signals.curvature import gd_threshold, hessian_trace, top_eigenvalues


def _learning_rates(values: tuple[float, ...]) -> str | None:
    bad = [v for v in values if not (v > 0 and math.isfinite(v))]
    return f"learning rates must be positive, got {bad[0]:g}" if bad else None


@dataclass(frozen=True)
class EosConfig:
    """Defaults: a tanh MLP 64-64-64-10 (9,034 parameters), the 1347 digits training images as
    one full batch; the whole study takes well under a minute on one CPU thread. The fields declared
with `setting` are the CLI's flags; device and threads come from the runtime options."""

    width: int = setting(64, "hidden width of the tanh MLP", check=positive)
    depth: int = setting(2, "hidden layers", check=positive)
    mse_lrs: tuple[float, ...] = setting((0.1, 0.2), "GD learning rates, MSE (empty: skip)", parse=csv(float),
                                         check=_learning_rates)
    cross_entropy_lrs: tuple[float, ...] = setting((0.2, 0.5), "GD learning rates, cross-entropy (empty: skip)",
                                                   parse=csv(float), check=_learning_rates, flag="ce-lrs")
    mse_steps: int = setting(2000, "GD steps, MSE", check=non_negative)
    cross_entropy_steps: int = setting(1000, "GD steps, cross-entropy", check=non_negative, flag="ce-steps")
    check_every: int = setting(25, "steps between sharpness measurements", check=positive)
    tol: float = setting(1e-3, "Lanczos relative-error stopping rule", check=positive)
    band: float = setting(0.1, "'hovers' means within this fraction of 2/lr", check=positive)
    sgd_lrs: tuple[float, ...] = setting((0.1, 0.2), "SGD learning rates for the trace check (empty: skip)",
                                         parse=csv(float), check=_learning_rates)
    sgd_batch_size: int = setting(32, "SGD batch size", check=positive)
    sgd_steps: int = setting(2000, "SGD steps", check=non_negative)
    trace_products: int = setting(90, "Hutch++ Hessian-vector products for the final trace", check=positive)
    seed: int = setting(0, "seed of the initial weights and the SGD batches")
    device: str = "cpu"
    threads: int = 1
    extra: dict = field(default_factory=dict)

    def check(self) -> str | None:
        if not self.mse_lrs and not self.cross_entropy_lrs:
            return "give at least one learning rate (--mse-lrs or --ce-lrs)"
        return None


def make_mlp(width: int, depth: int, seed: int, in_features: int = 64, classes: int = 10) -> nn.Module:
    """tanh MLP with biases, PyTorch's default init (Cohen et al. use tanh networks for their MSE runs)."""
    torch.manual_seed(seed)
    return MLP(in_features, classes, hidden=(width,) * depth, bias=True, activation="tanh")


def mse_loss(model: nn.Module, batch) -> torch.Tensor:
    # Cohen et al. 2021: 0.5 * squared error to the one-hot target, summed over classes, mean over samples.
    x, y = batch
    return 0.5 * (model(x) - F.one_hot(y, 10).to(x.dtype)).pow(2).sum(1).mean()


def cross_entropy_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


LOSSES = {"mse": mse_loss, "cross_entropy": cross_entropy_loss}


def hover_statistics(steps: list[int], sharpness: list[float], lr: float, band: float = 0.1) -> dict:
    """Edge-of-stability summary of one run: where sharpness first reaches (1 - band) * 2/lr, and how
    it behaves afterwards (median ratio to 2/lr, fraction of checks within +-band of 2/lr)."""
    threshold = gd_threshold(lr)
    ratios = [s / threshold for s in sharpness]
    first = next((i for i, r in enumerate(ratios) if r >= 1 - band), None)
    out = {"initial_ratio": ratios[0] if ratios else None, "reached_step": None, "median_ratio_after": None,
           "fraction_within_band_after": None, "max_ratio_after": None, "hovers": False}
    if first is None:
        return out
    after = sorted(ratios[first:])
    inside = sum(1 for r in after if abs(r - 1) <= band) / len(after)
    median = after[len(after) // 2] if len(after) % 2 else 0.5 * (after[len(after) // 2 - 1] + after[len(after) // 2])
    out.update({
        "reached_step": steps[first], "median_ratio_after": median, "fraction_within_band_after": inside,
        "max_ratio_after": after[-1],
        # Rises from below, then stays within the band: median inside and at least 3/4 of the checks.
        "hovers": bool(ratios[0] < 1 - band and abs(median - 1) <= band and inside >= 0.75 and len(after) >= 4),
    })
    return out


def run_gradient_descent(loss_name: str, lr: float, steps: int, config: EosConfig, data: Digits,
                         advance=lambda n: None, run_dir: str | Path | None = None) -> dict:
    """Full-batch GD through stablelab.run.loop; sharpness (Lanczos) and loss every `check_every`
    steps and at the end. Divergence is a result. With run_dir, the run is a store folder: a finished
    one with the same configuration is read back instead of retrained."""
    run_config = {"kind": "gradient_descent", "loss": loss_name, "lr": lr, "steps": steps, **_run_fields(config)}
    finished = read_finished(run_dir, run_config)
    if finished is not None:
        advance(steps)
        return _readback(finished[0])
    device = torch.device(config.device)
    loss_fn = LOSSES[loss_name]
    batch = (data.x_train.to(device), data.y_train.to(device))
    model = make_mlp(config.width, config.depth, config.seed).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    record = {"loss": loss_name, "lr": lr, "steps": [], "sharpness": [], "train_loss": [], "products": 0,
              "diverged": False}
    warm = {"vector": None}

    def check(step: int, loss: torch.Tensor) -> dict:
        loss = float(loss.detach())
        sharpness = float("nan")
        if math.isfinite(loss):
            # Warm start from the last top eigenvector: the Hessian drifts slowly between checks.
            result = top_eigenvalues(model, loss_fn, batch, tol=config.tol, seed=config.seed,
                                     return_result=True, start=warm["vector"])
            record["products"] += result.products
            sharpness, warm["vector"] = float(result.eigenvalues[0]), result.vector
        for key, value in (("steps", step), ("sharpness", sharpness), ("train_loss", loss)):
            record[key].append(value)
        return {"step": step, "sharpness": sharpness, "train_loss": loss}

    start = time.perf_counter()
    writer = open_run(run_dir, run_config)
    try:
        loop = train_loop(steps, lambda step: loss_fn(model, batch), optimizer, log_every=config.check_every,
                          on_log=check, diverge_on=("sharpness",), finite_every=0, writer=writer,
                          advance=advance)
        record["diverged"] = loop.diverged
        if not loop.diverged:  # the final weights are checked too
            with torch.no_grad():
                row = check(steps, loss_fn(model, batch))
            record["diverged"] = not (math.isfinite(row["train_loss"]) and math.isfinite(row["sharpness"]))
            if writer:
                writer.log(row)
    finally:
        if writer:
            writer.close()
    with torch.no_grad():
        record["train_accuracy"] = float((model(batch[0]).argmax(1) == batch[1]).float().mean())
        record["test_accuracy"] = float(
            (model(data.x_test.to(device)).argmax(1) == data.y_test.to(device)).float().mean())
    record["seconds"] = time.perf_counter() - start
    record["gd_threshold"] = gd_threshold(lr)
    record.update(hover_statistics(record["steps"], record["sharpness"], lr, config.band))
    record["hovers"] = record["hovers"] and not record["diverged"]
    if writer:
        writer.finish(record)
    return record


def run_sgd_trace(lr: float, config: EosConfig, data: Digits, advance=lambda n: None,
                  run_dir: str | Path | None = None) -> dict:
    """Minibatch SGD (MSE) for `sgd_steps`, then trace(H) and lambda_max on the full training set,
    beside full-batch GD at the same LR and number of steps (both through stablelab.run.loop)."""
    run_config = {"kind": "sgd_trace", "lr": lr, **_run_fields(config)}
    finished = read_finished(run_dir, run_config)
    if finished is not None:
        advance(2 * config.sgd_steps)
        return finished[0]
    device = torch.device(config.device)
    full = (data.x_train.to(device), data.y_train.to(device))
    out = {"lr": lr, "batch_size": config.sgd_batch_size, "steps": config.sgd_steps, "gd_threshold": gd_threshold(lr)}
    generator = torch.Generator().manual_seed(config.seed)  # minibatch order, independent of the global RNG
    writer = open_run(run_dir, run_config)
    for name, batch_size in (("sgd", config.sgd_batch_size), ("gd", len(data.y_train))):
        model = make_mlp(config.width, config.depth, config.seed).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        n = len(data.y_train)
        order = {"index": torch.randperm(n, generator=generator), "position": 0}

        def compute_loss(step: int) -> torch.Tensor:
            if order["position"] + batch_size > n:
                order["index"], order["position"] = torch.randperm(n, generator=generator), 0
            index = order["index"][order["position"]: order["position"] + batch_size].to(device)
            order["position"] += batch_size
            return mse_loss(model, (full[0][index], full[1][index]))

        train_loop(config.sgd_steps, compute_loss, optimizer, finite_every=0, advance=advance)
        with torch.no_grad():
            loss = float(mse_loss(model, full))
        trace = hessian_trace(model, mse_loss, full, n_products=config.trace_products, seed=config.seed)
        lam = float(top_eigenvalues(model, mse_loss, full, tol=config.tol, seed=config.seed)[0])
        out[name] = {"train_loss": loss, "trace": trace, "lambda_max": lam,
                     "trace_ratio": trace / gd_threshold(lr), "sharpness_ratio": lam / gd_threshold(lr)}
        if writer:
            writer.log({"method": name, **out[name]})
    if writer:
        writer.finish(out)
    return out


def _run_fields(config: EosConfig) -> dict:
    """What one run depends on (not the list of runs, nor the thread count)."""
    plan = ("mse_lrs", "cross_entropy_lrs", "mse_steps", "cross_entropy_steps", "sgd_lrs", "threads", "extra")
    return {k: v for k, v in asdict(config).items() if k not in plan}


def _readback(record: dict) -> dict:
    # strict JSON stores NaN and inf as null: a diverged run's last check reads back as NaN
    for key in ("sharpness", "train_loss"):
        record[key] = [float("nan") if v is None else v for v in record[key]]
    return record


def run_study(config: EosConfig, out_dir: Path, progress: bool = True) -> dict:
    """The whole study: GD runs, SGD-vs-GD traces (one store folder each under out_dir/runs, read
    back when finished), then report.html, sharpness.png and summary.json. Torch's thread count is
    restored afterwards."""
    from stablelab.report.eos_figures import write_page
    from stablelab.store.files import atomic_write_bytes, atomic_write_json

    data = load_digits(seed=config.seed)
    plan = [(name, lr, config.mse_steps if name == "mse" else config.cross_entropy_steps)
            for name, lrs in (("mse", config.mse_lrs), ("cross_entropy", config.cross_entropy_lrs)) for lr in lrs]
    total = sum(s for _, _, s in plan) + 2 * config.sgd_steps * len(config.sgd_lrs)
    runs_dir = out_dir / "runs"
    start = time.perf_counter()
    runs, sgd = [], []
    with threads_scope(config.threads):
        with progress_bar("eos", total, description="edge of stability", transient=True, enabled=progress) as bar:
            for name, lr, steps in plan:
                bar.update(description=f"GD {name} lr {lr:g}")
                runs.append(run_gradient_descent(name, lr, steps, config, data, bar.advance,
                                                 runs_dir / f"gd_{name}_lr{lr:g}"))
            for lr in config.sgd_lrs:
                bar.update(description=f"SGD vs GD lr {lr:g}")
                sgd.append(run_sgd_trace(lr, config, data, bar.advance, runs_dir / f"sgd_lr{lr:g}"))
    seconds = time.perf_counter() - start

    hovering = [r for r in runs if r["hovers"]]
    summary = {
        "config": asdict(config), "seconds": seconds, "runs": runs, "sgd": sgd,
        "hovering_runs": [f"{r['loss']} lr {r['lr']:g}" for r in hovering],
        "edge_of_stability_reproduced": len(hovering) >= 2,
    }
    subtitle = (f"tanh MLP {config.depth} x {config.width} on digits (1347 images, full batch); "
                f"sharpness by Lanczos (relative error <= {config.tol:g}) every {config.check_every} steps; "
                f"{seconds:.0f} s on {config.device} with {config.threads} thread(s)")
    png = write_page(out_dir / "report.html", subtitle, runs, sgd, config.band, config.trace_products)
    atomic_write_bytes(out_dir / "sharpness.png", png)
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def main(config: EosConfig, runtime: Runtime) -> int:
    """`stablelab eos`: the study, then one line per run."""
    config = replace(config, device=runtime.device, threads=runtime.threads or 1)
    out_dir = runtime.out
    summary = run_study(config, out_dir, progress=runtime.progress)
    for r in summary["runs"]:
        verdict = "hovers at 2/lr" if r["hovers"] else "does not hover"
        median = "-" if r["median_ratio_after"] is None else f"{r['median_ratio_after']:.3f}"
        print(f"{r['loss']:>13} lr {r['lr']:<5g} sharpness {r['sharpness'][0]:.3g} -> median {median} x 2/lr "
              f"after step {r['reached_step']}: {verdict}")
    for s in summary["sgd"]:
        print(f"SGD lr {s['lr']:g}: trace(H) / (2/lr) = {s['sgd']['trace_ratio']:.3f}; "
              f"GD lambda_max / (2/lr) = {s['gd']['sharpness_ratio']:.3f}")
    print(f"edge of stability reproduced: {summary['edge_of_stability_reproduced']} "
          f"({summary['seconds']:.0f} s); report: {out_dir / 'report.html'}")
    return 0


COMMAND = Command(EosConfig, main, runtime=("out", "device", "threads", "progress"),
                  runtime_defaults={"threads": 1})
