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

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from stablelab.data.modular import OPERATIONS, ClassificationTask, modular_arithmetic, sparse_parity
from stablelab.config import Runtime, between, csv, each, non_negative, positive, setting
from stablelab.models.mlp import MLP
from stablelab.nn import stable_max_cross_entropy
from stablelab.optim.orthogonal import OrthogonalGradient
from stablelab.signals.collapse import nlm_alignment, softmax_collapse_fraction, zero_loss_fraction
from stablelab.run.loop import open_run, read_finished, train_loop
from stablelab.run.progress import progress_bar
from stablelab.run.runtime import threads_scope
from stablelab.io import atomic_write_json
from stablelab.studies.command import Command

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


_TASKS = (*OPERATIONS, "parity")


def _dtype_check(names: tuple[str, ...], allow_empty: bool = False):
    def check(value: str) -> str | None:
        if (allow_empty and value == "") or value in names:
            return None
        return f"must be one of {', '.join(names)}, not {value!r}"
    return check


@dataclass(frozen=True)
class GrokConfig:
    """Everything a grok study depends on (stored with each run; a changed config reruns it).
    Each field is also the CLI flag of the same name (stablelab.config)."""

    # name -> (overrides, one-line description). A preset only sets defaults; flags override.
    PRESETS: ClassVar[dict[str, tuple[dict[str, Any], str]]] = {
        "default": ({}, "a + b mod 113, 40% train, MLP 2x200, lr 1e-2, 300 full-batch steps (float32)"),
        "collapse": ({"softmax_dtype": "bfloat16"},
                     "the default run with the loss computed in bfloat16: plain softmax collapses "
                     "(>50% of samples)"),
    }

    task: str = setting("add", f"{', '.join(OPERATIONS)} (mod p) or parity",
                        check=lambda t: None if t in _TASKS else f"unknown task {t!r}; choose from {', '.join(_TASKS)}")
    p: int = setting(113, "modulus", check=positive)
    train_fraction: float = setting(0.4, "fraction of the pairs used for training", check=between(0.0, 1.0))
    steps: int = setting(300, "full-batch optimizer steps per variant", check=positive)
    lr: float = setting(1e-2, "AdamW learning rate", check=positive)
    weight_decay: float = setting(1.0, "AdamW decoupled weight decay of the softmax_adamw_wd variant "
                                  "(the others use 0)", check=non_negative)
    beta2: float = setting(0.999, "AdamW beta2", check=between(0.0, 1.0))
    adam_eps: float = setting(1e-8, "AdamW eps", check=positive)
    hidden: tuple[int, ...] = setting((200, 200), "hidden widths, comma-separated", parse=csv(int),
                                      check=each(positive))
    dtype: str = setting("float32", "float32 or float64: model and data precision",
                         check=_dtype_check(tuple(DTYPES)))
    softmax_dtype: str = setting("", "precision of the loss (softmax or StableMax): float16, bfloat16, "
                                 "float32 or float64 (empty: --dtype)",
                                 check=_dtype_check(tuple(LOSS_DTYPES), allow_empty=True))
    logit_scale: float = setting(1.0, "multiply the logits by this before the loss (Prieto et al.'s alpha)",
                                 check=positive)
    init_scale: float = setting(1.0, "multiply the initial weights by this", check=positive)
    seed: int = setting(0, "seed of the split and the initial weights")
    eval_every: int = setting(10, "log every this many steps", check=positive)
    parity_bits: int = setting(4, "sparse parity: bits that define the label", check=positive)
    parity_noise: int = setting(36, "sparse parity: noise bits", check=non_negative)
    parity_samples: int = setting(2000, "sparse parity: samples", check=positive)


PRESETS = GrokConfig.PRESETS


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
def main(config: GrokConfig, runtime: Runtime, preset: str = "default") -> int:
    """`stablelab grok`: train (or read back) the variants, write the report, print one line each."""
    out = runtime.out
    results = run_study(config, out, preset=preset, device=runtime.device, threads=None,
                        progress=runtime.progress)
    for variant, (result, _) in results.items():
        reached = result["steps_to_95_test"]
        print(f"{variant:26s} train {result['final_train_acc']:6.1%}  test {result['final_test_acc']:6.1%}  "
              f"95% test at {reached if reached is not None else 'never':>5}  "
              f"max collapse {result['max_softmax_collapse']:.1%}")
    print(f"report: {out / 'report.html'}")
    return 0


# threads 1 by default: the MLP is too small to gain from more
COMMAND = Command(GrokConfig, main, runtime=("out", "device", "threads", "progress"),
                  runtime_defaults={"threads": 1}, takes_preset=True)


def run_study(config: GrokConfig, out: Path, preset: str = "default", device: str = "cpu", threads: int | None = 1,
              progress: bool = True) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The whole study: train (or read back) the four variants, write summary.json and report.html;
    returns {variant: (result, rows)}. Torch's thread count is restored afterwards."""
    with threads_scope(threads):
        results = train_variants(config, out, device=device, progress=progress)
    atomic_write_json(out / "summary.json", summary(config, results, preset, device))
    write_report(config, results, out, preset, device)
    return results
