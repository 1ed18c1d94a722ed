"""`stablelab grok`: softmax collapse and grokking on algorithmic tasks (Prieto et al. 2025,
"Grokking at the edge of numerical stability", arXiv 2501.04697).

Four variants train the same MLP from the same initialisation, full batch, side by side:

    softmax_adamw             softmax cross-entropy, AdamW, no weight decay (the failing baseline)
    softmax_adamw_wd          the same with weight decay (the classic way to grok)
    stablemax_adamw           StableMax cross-entropy, AdamW, no weight decay
    softmax_orthogonal_adamw  softmax cross-entropy, AdamW wrapped in the orthogonal gradient

Each logs train/test accuracy, the softmax collapse fraction of the training logits, the fraction of
training samples with exactly zero loss and the NLM alignment cos(grad, w) per layer; the report
shows the curves and the step at which each variant first reaches 95% test accuracy.
Runs are stored one folder each (stablelab.store); a finished run is not repeated on a rerun.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from stablelab.data.modular import OPERATIONS, ClassificationTask, modular_arithmetic, sparse_parity
from stablelab.errors import UsageError
from stablelab.models.mlp import MLP
from stablelab.nn import stable_max_cross_entropy
from stablelab.optim.orthogonal import OrthogonalGradient
from stablelab.signals.collapse import nlm_alignment, softmax_collapse_fraction, zero_loss_fraction
from stablelab.run.loop import open_run, read_finished, train_loop
from stablelab.run.progress import progress_bar
from stablelab.run.runtime import threads_scope
from stablelab.store.files import atomic_write_json

VARIANTS: dict[str, dict[str, Any]] = {
    "softmax_adamw": {"loss": "softmax", "weight_decay": False, "orthogonal": False},
    "softmax_adamw_wd": {"loss": "softmax", "weight_decay": True, "orthogonal": False},
    "stablemax_adamw": {"loss": "stablemax", "weight_decay": False, "orthogonal": False},
    "softmax_orthogonal_adamw": {"loss": "softmax", "weight_decay": False, "orthogonal": True},
}
LABELS = {
    "softmax_adamw": "softmax + AdamW",
    "softmax_adamw_wd": "softmax + AdamW + weight decay",
    "stablemax_adamw": "StableMax + AdamW",
    "softmax_orthogonal_adamw": "softmax + orthogonal-gradient AdamW",
}
TARGET_TEST_ACC = 0.95
DTYPES = {"float32": torch.float32, "float64": torch.float64}
LOSS_DTYPES = {**DTYPES, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class GrokConfig:
    """Everything a grok study depends on (stored with each run; a changed config reruns it)."""

    task: str = "add"  # add | sub | mul | parity
    p: int = 113
    train_fraction: float = 0.4
    steps: int = 300
    lr: float = 1e-2
    weight_decay: float = 1.0  # AdamW decoupled decay of the *_wd variant (the others use 0)
    beta2: float = 0.999
    adam_eps: float = 1e-8
    hidden: tuple[int, ...] = (200, 200)
    dtype: str = "float32"  # model and data precision
    softmax_dtype: str = ""  # precision of the loss (softmax or StableMax); "" = the model's dtype
    logit_scale: float = 1.0  # multiplies the logits before the loss (Prieto et al.'s alpha)
    init_scale: float = 1.0  # multiplies the initial weights
    seed: int = 0
    eval_every: int = 10
    parity_bits: int = 4
    parity_noise: int = 36
    parity_samples: int = 2000


# name -> (config overrides, one-line description). A preset only sets defaults; flags override.
PRESETS: dict[str, tuple[dict[str, Any], str]] = {
    "default": ({}, "a + b mod 113, 40% train, MLP 2x200, lr 1e-2, 300 full-batch steps (float32)"),
    "collapse": (
        {"softmax_dtype": "bfloat16"},
        "the default run with the loss computed in bfloat16: plain softmax collapses (>50% of samples)",
    ),
}


# -- one run ------------------------------------------------------------------------------------
def build_task(config: GrokConfig, device: str) -> ClassificationTask:
    dtype = DTYPES[config.dtype]
    if config.task == "parity":
        return sparse_parity(config.parity_bits, config.parity_noise, config.parity_samples,
                             config.train_fraction, config.seed, dtype=dtype, device=device)
    return modular_arithmetic(config.task, config.p, config.train_fraction, config.seed, dtype=dtype,
                              device=device)


def build_model(config: GrokConfig, task: ClassificationTask, device: str) -> MLP:
    torch.manual_seed(config.seed)  # the same initial weights for every variant
    model = MLP(task.input_dim, task.num_classes, config.hidden)
    if config.init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(config.init_scale)
    return model.to(device=device, dtype=DTYPES[config.dtype])


def build_optimizer(config: GrokConfig, variant: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    spec = VARIANTS[variant]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, config.beta2),
                                  eps=config.adam_eps,
                                  weight_decay=config.weight_decay if spec["weight_decay"] else 0.0)
    return OrthogonalGradient(optimizer) if spec["orthogonal"] else optimizer


def loss_function(variant: str) -> Callable[..., torch.Tensor]:
    if VARIANTS[variant]["loss"] == "stablemax":
        return stable_max_cross_entropy
    return torch.nn.functional.cross_entropy


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    return float((logits.argmax(dim=-1) == target).float().mean())


def steps_to_target(rows: list[dict[str, Any]], key: str = "test_acc",
                    target: float = TARGET_TEST_ACC) -> int | None:
    """First logged step whose `key` is at least `target`; None if it never is."""
    for row in rows:
        value = row.get(key)
        if value is not None and value >= target:
            return int(row["step"])
    return None


def train_variant(config: GrokConfig, variant: str, device: str = "cpu", run_dir: str | Path | None = None,
                  on_step: Callable[[int], None] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train one variant through stablelab.run.loop; returns (result, logged rows). Writes a run
    folder when run_dir is given. The last row (step `steps`) describes the final weights."""
    task = build_task(config, device)
    model = build_model(config, task, device)
    optimizer = build_optimizer(config, variant, model)
    loss_fn = loss_function(variant)
    softmax_dtype = LOSS_DTYPES[config.softmax_dtype or config.dtype]
    writer = open_run(run_dir, {"variant": variant, **asdict(config)})
    forward: dict[str, torch.Tensor] = {}

    def compute_loss(step: int) -> torch.Tensor:
        forward["logits"] = logits = model(task.x_train) * config.logit_scale
        # the loss is computed in softmax_dtype (as the official code's cross_entropy_float16/64)
        return loss_fn(logits.to(softmax_dtype), task.y_train).to(logits.dtype)

    def on_log(step: int, loss: torch.Tensor) -> dict[str, Any]:
        row = _log_row(step, model, task, config, forward["logits"], loss, loss_fn, softmax_dtype)
        # cos(grad, w) of the raw gradient, before any projection
        return {**row, **{f"nlm_alignment/{name}": value for name, value in nlm_alignment(model).items()}}

    start = time.perf_counter()
    try:
        loop = train_loop(config.steps, compute_loss, optimizer, log_every=config.eval_every, on_log=on_log,
                          writer=writer, advance=on_step)
        rows = loop.rows
        if not loop.diverged:  # the final weights: a forward and a row, no update after it
            loss = compute_loss(config.steps)
            rows.append(_log_row(config.steps, model, task, config, forward["logits"], loss, loss_fn,
                                 softmax_dtype))
            if writer:
                writer.log(rows[-1])
    finally:
        if writer:
            writer.close()
    result = _result(variant, rows, loop.diverged, time.perf_counter() - start)
    if writer:
        writer.finish(result)
    return result, rows


def _result(variant: str, rows: list[dict[str, Any]], diverged: bool, seconds: float) -> dict[str, Any]:
    final = rows[-1]
    return {
        "variant": variant,
        "final_train_acc": final["train_acc"],
        "final_test_acc": final["test_acc"],
        "steps_to_95_test": steps_to_target(rows),
        "steps_to_100_train": steps_to_target(rows, "train_acc", 1.0),
        # collapse of the normaliser the variant trains with: softmax collapse for the softmax
        # variants; StableMax has no exp, and its collapse is a loss of exactly 0 (no gradient)
        "max_softmax_collapse": max(r["zero_loss_fraction" if VARIANTS[variant]["loss"] == "stablemax"
                                      else "softmax_collapse"] for r in rows),
        "max_softmax_collapse_of_logits": max(r["softmax_collapse"] for r in rows),
        "max_zero_loss_fraction": max(r["zero_loss_fraction"] for r in rows),
        "final_nlm_alignment_output": final.get("nlm_alignment/output.weight",
                                                rows[-2].get("nlm_alignment/output.weight") if len(rows) > 1 else None),
        "steps": int(final["step"]),
        "diverged": diverged,
        "seconds": seconds,
    }


@torch.no_grad()
def _log_row(step: int, model: torch.nn.Module, task: ClassificationTask, config: GrokConfig,
             logits: torch.Tensor, loss: torch.Tensor, loss_fn, softmax_dtype: torch.dtype) -> dict[str, Any]:
    test_logits = model(task.x_test) * config.logit_scale
    return {
        "step": step,
        "train_loss": float(loss),
        "train_acc": accuracy(logits, task.y_train),
        "test_loss": float(loss_fn(test_logits.to(softmax_dtype), task.y_test)),
        "test_acc": accuracy(test_logits, task.y_test),
        # softmax collapse of the training logits, in the precision the softmax is computed in
        "softmax_collapse": softmax_collapse_fraction(logits, dtype=softmax_dtype),
        # samples whose own loss (softmax or StableMax) is exactly 0: they give no gradient
        "zero_loss_fraction": zero_loss_fraction(logits, task.y_train, dtype=softmax_dtype,
                                                 loss_fn=loss_fn if loss_fn is not torch.nn.functional.cross_entropy
                                                 else None),
        "logit_max_abs": float(logits.abs().max()),
        "weight_norm": float(torch.sqrt(sum((p.double() ** 2).sum() for p in model.parameters()))),
    }


# -- the study ----------------------------------------------------------------------------------
def train_variants(config: GrokConfig, out: Path, device: str = "cpu", progress: bool = True
                   ) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """All four variants, one run folder each under out/runs; finished runs with the same config
    are read back instead of retrained."""
    runs_dir = out / "runs"
    results: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for variant in VARIANTS:
        finished = read_finished(runs_dir / variant, {"variant": variant, **asdict(config)})
        if finished is not None:
            results[variant] = finished
    pending = [v for v in VARIANTS if v not in results]
    if pending:
        with progress_bar("grok", len(pending) * config.steps, enabled=progress) as bar:
            for variant in pending:
                bar.update(description=variant)
                results[variant] = train_variant(config, variant, device, runs_dir / variant, on_step=bar.advance)
    return {v: results[v] for v in VARIANTS}


def summary(config: GrokConfig, results, preset: str, device: str) -> dict[str, Any]:
    keys = ("final_train_acc", "final_test_acc", "steps_to_95_test", "max_softmax_collapse",
            "max_softmax_collapse_of_logits", "max_zero_loss_fraction", "steps_to_100_train", "final_nlm_alignment_output", "diverged",
            "seconds")
    return {
        "study": "grok",
        "preset": preset,
        "device": device,
        "config": asdict(config),
        "target_test_acc": TARGET_TEST_ACC,
        "variants": {v: {k: result[k] for k in keys} for v, (result, _) in results.items()},
    }


def write_report(config: GrokConfig, results, out: Path, preset: str, device: str) -> Path:
    from stablelab.report.grok_figures import write_page

    subtitle = (f"{_task_title(config)}; train fraction {config.train_fraction}; MLP {list(config.hidden)}; "
                f"AdamW lr {config.lr}, betas (0.9, {config.beta2}), eps {config.adam_eps}; "
                f"full batch, {config.steps} steps, {config.dtype} (loss in "
                f"{config.softmax_dtype or config.dtype}); preset {preset}; device {device}")
    return write_page(out / "report.html", subtitle, results, LABELS,
                      stablemax={v for v, spec in VARIANTS.items() if spec["loss"] == "stablemax"},
                      target=TARGET_TEST_ACC, loss_dtype=config.softmax_dtype or config.dtype,
                      reproduce="stablelab grok " + " ".join(_cli_flags(config, preset)) + " --out DIR")


def _task_title(config: GrokConfig) -> str:
    if config.task == "parity":
        return (f"sparse parity of {config.parity_bits} of {config.parity_bits + config.parity_noise} bits, "
                f"{config.parity_samples} samples")
    symbol = {"add": "+", "sub": "-", "mul": "*"}[config.task]
    return f"a {symbol} b mod {config.p}"


def _cli_flags(config: GrokConfig, preset: str) -> list[str]:
    flags = [f"--preset {preset}", f"--task {config.task}", f"--p {config.p}",
             f"--train-fraction {config.train_fraction}", f"--steps {config.steps}", f"--lr {config.lr}",
             f"--weight-decay {config.weight_decay}", f"--dtype {config.dtype}", f"--seed {config.seed}"]
    if config.softmax_dtype:
        flags.append(f"--softmax-dtype {config.softmax_dtype}")
    if config.logit_scale != 1.0:
        flags.append(f"--logit-scale {config.logit_scale}")
    if config.init_scale != 1.0:
        flags.append(f"--init-scale {config.init_scale}")
    return flags


# -- CLI ----------------------------------------------------------------------------------------
_FLAGS = {  # flag -> (GrokConfig field, type, help)
    "--task": ("task", str, f"{', '.join(OPERATIONS)} (mod p) or parity"),
    "--p": ("p", int, "modulus (default 113)"),
    "--train-fraction": ("train_fraction", float, "fraction of the pairs used for training (default 0.4)"),
    "--steps": ("steps", int, "full-batch optimizer steps per variant"),
    "--lr": ("lr", float, "AdamW learning rate (default 1e-2)"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay of the softmax_adamw_wd variant (default 1.0)"),
    "--beta2": ("beta2", float, "AdamW beta2 (default 0.999)"),
    "--adam-eps": ("adam_eps", float, "AdamW eps (default 1e-8)"),
    "--dtype": ("dtype", str, "float32 or float64: model and data precision (default float32)"),
    "--softmax-dtype": ("softmax_dtype", str, "precision of the loss: float16, bfloat16, float32 or "
                                                "float64 (default: --dtype)"),
    "--logit-scale": ("logit_scale", float, "multiply the logits by this before the loss (default 1)"),
    "--init-scale": ("init_scale", float, "multiply the initial weights by this (default 1)"),
    "--seed": ("seed", int, "seed of the split and the initial weights"),
    "--eval-every": ("eval_every", int, "log every this many steps (default 10)"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (report.html, summary.json, runs/)")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS),
                        help="; ".join(f"{k}: {v[1]}" for k, v in PRESETS.items()))
    for flag, (_, kind, help_text) in _FLAGS.items():
        parser.add_argument(flag, type=kind, default=None, help=help_text)
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="hidden widths (default 200 200)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: the MLP is too small to gain from more)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> GrokConfig:
    values = dict(PRESETS[args.preset][0])
    for flag, (field_name, _, _) in _FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            values[field_name] = value
    if args.hidden is not None:
        values["hidden"] = tuple(args.hidden)
    config = GrokConfig(**values)
    if config.task not in (*OPERATIONS, "parity"):
        raise UsageError(f"unknown task {config.task!r}; choose from {', '.join((*OPERATIONS, 'parity'))}")
    if config.dtype not in DTYPES:
        raise UsageError(f"--dtype must be float32 or float64, not {config.dtype!r}")
    if config.softmax_dtype and config.softmax_dtype not in LOSS_DTYPES:
        raise UsageError(f"--softmax-dtype must be one of {', '.join(LOSS_DTYPES)}, not {config.softmax_dtype!r}")
    if config.steps < 1 or config.eval_every < 1:
        raise UsageError("--steps and --eval-every must be positive")
    if config.lr <= 0:
        raise UsageError(f"--lr must be positive, got {config.lr}")
    if any(h < 1 for h in config.hidden):
        raise UsageError("--hidden widths must be positive")
    return config


def run(args: argparse.Namespace) -> int:
    """The CLI shim: flags -> GrokConfig, then `run_study`."""
    config = config_from_args(args)
    try:
        torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"unknown device {args.device!r}") from None
    if args.threads < 1:
        raise UsageError(f"--threads must be positive, got {args.threads}")
    out = Path(args.out)
    results = run_study(config, out, preset=args.preset, device=args.device, threads=args.threads,
                        progress=not args.no_progress)
    for variant, (result, _) in results.items():
        reached = result["steps_to_95_test"]
        print(f"{variant:26s} train {result['final_train_acc']:6.1%}  test {result['final_test_acc']:6.1%}  "
              f"95% test at {reached if reached is not None else 'never':>5}  "
              f"max collapse {result['max_softmax_collapse']:.1%}")
    print(f"report: {out / 'report.html'}")
    return 0


def run_study(config: GrokConfig, out: Path, preset: str = "default", device: str = "cpu", threads: int = 1,
              progress: bool = True) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The whole study: train (or read back) the four variants, write summary.json and report.html;
    returns {variant: (result, rows)}. Torch's thread count is restored afterwards."""
    with threads_scope(threads):
        results = train_variants(config, out, device=device, progress=progress)
    atomic_write_json(out / "summary.json", summary(config, results, preset, device))
    write_report(config, results, out, preset, device)
    return results
