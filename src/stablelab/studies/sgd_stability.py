"""`stablelab sgd-stability`: dynamical stability, reproduced on models where the theory applies.

Six sections, one report (docs/dynamics.md):
1-2. GD and SGD to interpolation on a diagonal linear network (sparse regression, n < d), a two-layer
     ReLU network (teacher regression) and the package's MLP; at the minimum lambda_max (Lanczos),
     trace(H) (Hutch++), the norm and the test error; lr * trace / 2 (SGD, Wu & Su 2023) and
     lr * lambda_max / 2 (GD, Cohen et al. 2021).
3.   Full-batch Adam at the edge of stability: preconditioned sharpness against 38/lr (Cohen et al. 2022).
4.   Opposing signals (Rosenfeld & Risteski 2023) with sharpness alongside.
5.   Warm-up against curvature on the reference transformer (Gilmer et al. 2022).
6.   Large step sizes on separable logistic regression (Wu, Bartlett, Telgarsky, Yu 2024).

Every run is a store folder under --out/runs (read back on a rerun). Outputs in --out: report.html,
summary.json, summary.md, one PNG per section, runs/."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from stablelab.analysis import dynamics as analysis
from stablelab.config import Runtime, csv, each, non_negative, positive, setting
from stablelab.data.synthetic import sparse_regression, teacher_regression
from stablelab.models.dynamics import DiagonalLinearNet, TwoLayerReLU
from stablelab.models.mlp import MLP
from stablelab.run.dynamics import stability_run
from stablelab.run.dynamics_adam import adam_edge_run, warmup_run
from stablelab.run.dynamics_signals import logistic_run, opposing_run
from stablelab.run.progress import progress_bar
from stablelab.run.runtime import threads_scope
from stablelab.studies.command import Command


def _finite_positive(value) -> str | None:
    ok = isinstance(value, (int, float)) and value > 0 and math.isfinite(value)
    return None if ok else f"must be positive, got {value}"


_lrs = each(_finite_positive)
_sizes = each(positive)


@dataclass(frozen=True)
class SgdStabilityConfig:
    """The full study's defaults; --quick swaps in the QUICK values for the settings left at their
    defaults (a smaller grid and fewer steps, well under 5 minutes on 2 cores)."""

    quick: bool = setting(False, "small grid and few steps (a smoke run of every section)")
    batch_sizes: tuple[int, ...] = setting((1, 2), "SGD batch sizes (GD, the full batch, is always run)",
                                           parse=csv(int), check=_sizes)
    diagonal_lrs: tuple[float, ...] = setting((0.01, 0.02, 0.04, 0.06, 0.08, 0.1), "learning rates, diagonal network",
                                              parse=csv(float), check=_lrs)
    relu_lrs: tuple[float, ...] = setting((0.05, 0.1, 0.2, 0.3, 0.4), "learning rates, two-layer ReLU network",
                                          parse=csv(float), check=_lrs)
    mlp_lrs: tuple[float, ...] = setting((0.1, 0.2, 0.3), "learning rates, the package's MLP",
                                         parse=csv(float), check=_lrs)
    diagonal_init: float = setting(0.2, "u = v = this at the start (diagonal network)", check=positive)
    max_steps: int = setting(20000, "step budget to reach the target loss", check=positive)
    target_loss: float = setting(1e-7, "stop once the full training loss is below this", check=positive)
    confirm_steps: int = setting(2000, "steps to go on after interpolation, to check SGD stays at the minimum",
                                 check=non_negative)
    trace_products: int = setting(90, "Hutch++ Hessian-vector products for trace(H)", check=positive)
    adam_lrs: tuple[float, ...] = setting((1e-3, 4e-3), "full-batch Adam learning rates", parse=csv(float), check=_lrs)
    adam_steps: int = setting(1000, "full-batch Adam steps", check=positive)
    adam_band: float = setting(0.15, "'hovers' = within this fraction of 38/lr", check=positive)
    warmup_lrs: tuple[float, ...] = setting((3e-3, 3e-2, 1e-1), "peak learning rates, warm-up section",
                                            parse=csv(float), check=_lrs)
    warmup_lengths: tuple[int, ...] = setting((1, 25, 100), "warm-up lengths in steps", parse=csv(int), check=_sizes)
    warmup_steps: int = setting(200, "training steps per warm-up run", check=positive)
    opposing_lr: float = setting(0.5, "GD learning rate, opposing-signals section", check=_finite_positive)
    opposing_steps: int = setting(1000, "GD steps, opposing-signals section", check=positive)
    logistic_lrs: tuple[float, ...] = setting((1.0, 10.0, 100.0, 1000.0, 10000.0), "GD step sizes, logistic section",
                                              parse=csv(float), check=_lrs)
    logistic_steps: int = setting(2000, "GD steps, logistic section", check=positive)
    seed: int = setting(0, "seed of data, initial weights and batches")


QUICK = {"batch_sizes": (1, 2), "diagonal_lrs": (0.01, 0.04, 0.06), "relu_lrs": (0.1, 0.3), "mlp_lrs": (0.2,),
         "max_steps": 8000, "confirm_steps": 500, "trace_products": 60, "adam_lrs": (4e-3,), "adam_steps": 400,
         "warmup_lrs": (3e-2,), "warmup_lengths": (1, 50), "warmup_steps": 100, "opposing_steps": 500,
         "logistic_lrs": (1.0, 100.0, 10000.0), "logistic_steps": 500}


def effective(config: SgdStabilityConfig) -> SgdStabilityConfig:
    """With quick, the QUICK values for every setting still at its default (explicit flags win)."""
    if not config.quick:
        return config
    defaults = SgdStabilityConfig()
    return replace(config, **{k: v for k, v in QUICK.items() if getattr(config, k) == getattr(defaults, k)})


def stability_models(config: SgdStabilityConfig) -> dict:
    """name -> (data, model factory, lrs, description)."""
    sparse = sparse_regression(n=30, d=100, k=3, seed=config.seed)
    teacher = teacher_regression(n=20, d=5, seed=config.seed)

    def mlp():
        torch.manual_seed(config.seed)
        return MLP(5, 1, hidden=(256,), bias=True, activation="relu").double()

    return {
        "diagonal_linear": (sparse, lambda: DiagonalLinearNet(100, config.diagonal_init), config.diagonal_lrs,
                            f"u*u-v*v d=100 init {config.diagonal_init:g}; sparse regression n=30 k=3"),
        "two_layer_relu": (teacher, lambda: TwoLayerReLU(5, 64, seed=config.seed), config.relu_lrs,
                           "a.relu(Bx) width 64; teacher regression n=20 d=5"),
        "mlp": (teacher, mlp, config.mlp_lrs, "nn.MLP 5-256-1 relu, biases; teacher regression n=20 d=5"),
    }


def run_study(config: SgdStabilityConfig, out_dir: Path, progress: bool = True) -> dict:
    from stablelab.io import atomic_write_bytes, atomic_write_json
    from stablelab.report.dynamics_figures import summary_markdown, write_page

    config = effective(config)
    models = stability_models(config)
    sizes = sorted(set(config.batch_sizes)) + [10 ** 9]  # the last: full batch (GD)
    n_stab = sum(len(m[2]) for m in models.values()) * len(sizes)
    total = (n_stab * (config.max_steps + config.confirm_steps) + 2 * len(config.adam_lrs) * config.adam_steps
             + len(config.warmup_lrs) * len(config.warmup_lengths) * config.warmup_steps
             + config.opposing_steps + len(config.logistic_lrs) * config.logistic_steps)
    runs_dir, start = out_dir / "runs", time.perf_counter()
    runs, adam, warm, logistic = [], [], [], []
    with progress_bar("sgd-stability", total, description="dynamical stability", transient=True,
                      enabled=progress) as bar:
        for name, (data, make, lrs, spec) in models.items():
            for b in sizes:
                for lr in lrs:
                    label = "gd" if b > len(data.y_train) else f"sgd_b{b}"
                    bar.update(description=f"{name} {label} lr {lr:g}")
                    runs.append(stability_run(name, make, data, lr, b, max_steps=config.max_steps,
                                              target_loss=config.target_loss, trace_products=config.trace_products,
                                              seed=config.seed, confirm_steps=config.confirm_steps,
                                              run_dir=runs_dir / f"{name}_{label}_lr{lr:g}",
                                              advance=bar.advance,
                                              fingerprint={"spec": spec}))
        for loss, noise in (("mse", 0.0), ("cross_entropy", 0.3)):
            for lr in config.adam_lrs:
                bar.update(description=f"Adam {loss} lr {lr:g}")
                record = adam_edge_run(loss, lr, steps=config.adam_steps, check_every=25, label_noise=noise,
                                       seed=config.seed, run_dir=runs_dir / f"adam_{loss}_lr{lr:g}",
                                       advance=bar.advance)
                record.update(analysis.hover_statistics(record["steps"], record["ratio"], config.adam_band))
                adam.append(record)
        for lr in config.warmup_lrs:
            for length in config.warmup_lengths:
                bar.update(description=f"warm-up {length} lr {lr:g}")
                warm.append(warmup_run(lr, length, steps=config.warmup_steps, check_steps=min(100, config.warmup_steps),
                                       check_every=10, seed=config.seed, advance=bar.advance,
                                       run_dir=runs_dir / f"warmup_{length}_lr{lr:g}"))
        bar.update(description="opposing signals")
        opposing = opposing_run(config.opposing_lr, steps=config.opposing_steps, check_every=25, seed=config.seed,
                                run_dir=runs_dir / f"opposing_lr{config.opposing_lr:g}", advance=bar.advance)
        opposing["loss_spikes"] = [opposing["steps"][i] for i in analysis.loss_spikes(opposing["train_loss"], 1.2, 2)]
        for lr in config.logistic_lrs:
            bar.update(description=f"logistic lr {lr:g}")
            logistic.append(logistic_run(lr, steps=config.logistic_steps, seed=config.seed,
                                         record_every=max(1, config.logistic_steps // 500),
                                         run_dir=runs_dir / f"logistic_lr{lr:g}", advance=bar.advance))
    for row in runs:
        row["lr_mixture_over_2"] = analysis.mixture_ratio(row)
    warm_lines = analysis.warmup_summary(warm)
    theory_models = ["diagonal_linear", "two_layer_relu"]
    theory_bound = analysis.bound_check(runs, theory_models)
    summary = {
        "config": asdict(config), "models": {name: m[3] for name, m in models.items()},
        "seconds": time.perf_counter() - start, "runs": runs,
        "sgd_stability": {"bound": analysis.bound_check(runs, list(models)),
                          "trend": analysis.norm_trend(runs, list(models)),
                          "bound_holds_on_theory_models": all(theory_bound[m]["all_within"] for m in theory_models)},
        "adam_edge": {"runs": adam, "hovers_in_some_setting": any(r["hovers"] for r in adam)},
        "opposing_signals": opposing,
        "warmup_curvature": {"runs": warm, "lines": warm_lines,
                             "prediction_agreement": analysis.prediction_agreement(warm_lines)},
        "logistic": {"runs": logistic},
    }
    for name, png in write_page(out_dir / "report.html", summary).items():
        atomic_write_bytes(out_dir / f"{name}.png", png)
    atomic_write_bytes(out_dir / "summary.md", summary_markdown(summary).encode())
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def main(config: SgdStabilityConfig, runtime: Runtime) -> int:
    with threads_scope(runtime.threads or 1):
        summary = run_study(config, runtime.out, progress=runtime.progress)
    bound = summary["sgd_stability"]["bound"]
    for model, b in bound.items():
        print(f"{model}: {b['interpolating_sgd_runs']} interpolating SGD runs, max lr*trace/2 = "
              f"{b['max_lr_trace_over_2'] if b['max_lr_trace_over_2'] is None else round(b['max_lr_trace_over_2'], 3)}")
    for r in summary["adam_edge"]["runs"]:
        print(f"Adam {r['loss']} lr {r['lr']:g}: reached 38/lr at step {r['reached_step']}, "
              f"{r['fraction_within_band_after'] or 0:.0%} of later checks within 15%: "
              f"{'hovers' if r['hovers'] else 'does not hover'}")
    print(f"done in {summary['seconds']:.0f} s; report: {runtime.out / 'report.html'}")
    return 0


COMMAND = Command(SgdStabilityConfig, main, runtime=("out", "progress", "threads"), runtime_defaults={"threads": 1})
