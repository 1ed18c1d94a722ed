"""One training run of the reference model: config -> model + data + optimizer + monitor -> run store.

The run records its metrics through `stablelab.monitor.Monitor` (warn-only policy: the study
measures instabilities, it does not mitigate them), so proxy runs carry the monitor's signals and
events. A diverged run is a result (`diverged: true` in result.json), never an exception."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from stablelab.data.corpus import BUILTIN, load_corpus, sample_batch
from stablelab.models.architectures import build_model, quantizer
from stablelab.models.transformer import TransformerConfig
from stablelab.models.variants import get_variant
from stablelab.monitor import Monitor, Policy, Sink
from stablelab.optim import create as create_optimizer
from stablelab.optim.transforms import clip_by_global_norm
from stablelab.run.loop import train_loop
from stablelab.run.schedule import parameter_groups, warmup_cosine
from stablelab.signals.gradients import rms, update_rms
from stablelab.signals.logits import output_log_z, z_loss
from stablelab.store.run_store import RunWriter

WARN_ONLY = {"*": "warn"}  # observe, never intervene: divergence is what the study measures
SHARPNESS_KEYS = ("lr", "lambda_max", "preconditioned_lambda_max", "adam_threshold", "adam_ratio", "sharpness_ratio")


@dataclass(frozen=True)
class ProxyRunConfig:
    """Everything that defines one run. Defaults: the paper's recipe scaled down to CPU size."""

    variant: str = "baseline"
    width: int = 128
    depth: int = 2
    lr: float = 1e-2
    seed: int = 0
    steps: int = 200
    batch_size: int = 8
    seq_len: int = 64
    d_head: int = 32
    warmup_fraction: float = 0.1       # linear warm-up, then cosine decay to min_lr
    min_lr: float = 1e-5
    weight_decay: float = 1e-4         # independent (not multiplied by the LR), paper default
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0             # global norm; 0 disables clipping
    mup_simple: bool = False
    base_width: int = 64
    optimizer: str = "adamw"
    model: str = "reference"           # models.architectures.MODELS, or "custom" (a model_fn)
    precision: str = "fp32"            # models.architectures.PRECISIONS (fake-quantised linears)
    tag: str = ""                      # the swept extra axes' values, e.g. "_wu0.01_eps1e-06"
    sharpness_every: int = 0           # preconditioned-sharpness check every N steps (0: none) ...
    sharpness_steps: int = 100         # ... during the first steps only (Gilmer et al. 2022: warm-up)
    corpus: str = BUILTIN
    log_every: int = 10
    eval_batches: int = 8
    device: str = "cpu"
    threads: int = 1
    extra: dict = field(default_factory=dict)  # provenance (corpus hash, python version)

    @property
    def run_id(self) -> str:
        prefix = "" if self.optimizer == "adamw" else f"{self.optimizer}_"
        prefix = prefix if self.model == "reference" else f"{self.model}_{prefix}"
        return f"{prefix}{self.variant}_w{self.width}_d{self.depth}_lr{self.lr:g}_s{self.seed}{self.tag}"

    def model_config(self) -> TransformerConfig:
        variant = get_variant(self.variant)
        return TransformerConfig(
            seq_len=self.seq_len, d_model=self.width, n_layers=self.depth,
            d_head=min(self.d_head, self.width), qk_norm=variant.qk_norm,
            norm_placement=variant.norm_placement,
        )

    def build(self, model_fn: Callable | None = None) -> torch.nn.Module:
        """The run's model: `model_fn(width, depth, variant)` for a custom model, else the registry."""
        if model_fn is not None:
            quantize = quantizer(self.precision, self.width)
            model = model_fn(self.width, self.depth, self.variant)
            return model if quantize is None else quantize(model)
        return build_model(self.model, self.width, self.depth, self.variant, self.seq_len, self.d_head,
                           self.precision)

    def to_dict(self) -> dict:
        return asdict(self)


def _item(x) -> float | None:
    return None if x is None else x.item()


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


class ProxyStoreSink(Sink):
    """Monitor rows -> the run's store: every `log_every`-th step and the last step, merged with the
    run's own per-step extras (update RMS, first-MLP gradient RMS, wall time); events as they come.
    The monitor goes on when a sink fails; this one is the run's record, so its first failed write
    (`failed`: a full disk) ends the run at its next log step instead of sealing a run without rows."""

    def __init__(self, writer: RunWriter, log_every: int, last_step: int):
        self.writer, self.log_every, self.last_step = writer, log_every, last_step
        self.failed: OSError | None = None
        self.extras: dict[int, dict] = {}
        self.max_attn_logit = 0.0
        self.sharpness: list[dict] = []  # the scheduled curvature checks, kept whatever the step

    def rows(self, rows):
        try:
            self._rows(rows)
        except OSError as error:  # kept for the loop to raise (the monitor would only warn)
            self.failed = self.failed or error

    def _rows(self, rows):
        for row in rows:
            step = row["step"]
            extra = self.extras.pop(step, None)
            if _finite(row.get("sharpness_lambda_max")):
                self.sharpness.append({k: row.get(f"sharpness_{k}") for k in SHARPNESS_KEYS} | {"step": step})
            elif step % self.log_every and step != self.last_step:
                continue
            row = {**row, **(extra or {})}
            value = row.get("attn_logit_max")
            if _finite(value):
                self.max_attn_logit = max(self.max_attn_logit, value)
            self.writer.log(row)

    def events(self, events):
        try:
            for event in events:
                self.writer.event(event.to_dict())
        except OSError as error:
            self.failed = self.failed or error


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]
             ) -> tuple[float, float, float]:
    """(validation cross-entropy, mean log Z, max |log Z|) over fixed batches."""
    was_training = model.training
    model.eval()
    losses, log_z_means, log_z_maxes = [], [], []
    for x, y in batches:
        logits = model(x)
        losses.append(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()))
        log_z = output_log_z(logits)
        log_z_means.append(log_z.mean())
        log_z_maxes.append(log_z.abs().amax())
    model.train(was_training)
    return (torch.stack(losses).mean().item(), torch.stack(log_z_means).mean().item(),
            torch.stack(log_z_maxes).amax().item())


def _sharpness_slot(config: ProxyRunConfig, corpus, device: torch.device) -> dict:
    """The Monitor's scheduled curvature check for the warm-up study (Gilmer et al. 2022): Adam's
    preconditioned sharpness on a fixed training batch against 38/lr(t), every `sharpness_every`
    steps before step `sharpness_steps`."""
    if not config.sharpness_every:
        return {}
    from stablelab.run.dynamics_adam import lm_loss_twice_differentiable

    generator = torch.Generator().manual_seed(4321)  # the same probe batch for every run
    probe = tuple(t.to(device) for t in sample_batch(corpus.train, config.batch_size, config.seq_len, generator))
    return {"sharpness_every": config.sharpness_every, "sharpness_until": config.sharpness_steps + 1,
            "sharpness_loss_fn": lm_loss_twice_differentiable, "sharpness_batch": probe,
            # only the preconditioned top eigenvalue matters here: no trace, 1% Lanczos tolerance
            "sharpness_options": {"tol": 1e-2, "trace_products": 0}}


def _first_mlp_weight(model: torch.nn.Module) -> torch.Tensor | None:
    find = getattr(model, "first_mlp_weight", None)
    return find() if callable(find) else None


def train(config: ProxyRunConfig, run_dir: str | Path,
          keep_going: Callable[[], bool] = lambda: True, model_fn: Callable | None = None) -> dict:
    """Train one model; write its folder in the run store; return result.json's content."""
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.time()
    device = torch.device(config.device)
    corpus = load_corpus(config.corpus)
    config = replace(config, extra={**config.extra, "corpus": corpus.describe()})
    variant = get_variant(config.variant)

    torch.manual_seed(config.seed)
    model = config.build(model_fn).to(device)
    mlp_weight = _first_mlp_weight(model)
    groups = parameter_groups(model, config.lr, config.weight_decay, config.mup_simple, config.base_width)
    optimizer = create_optimizer(config.optimizer, groups, lr=config.lr,
                                 betas=(config.beta1, config.beta2), eps=config.eps)
    params = [p for p in model.parameters() if p.requires_grad]
    data_rng = torch.Generator().manual_seed(10_000 + config.seed)
    eval_rng = torch.Generator().manual_seed(1234)  # same validation windows for every run
    eval_batches = [
        tuple(t.to(device) for t in sample_batch(corpus.validation, 32, config.seq_len, eval_rng))
        for _ in range(config.eval_batches)
    ]
    warmup = max(1, int(config.warmup_fraction * config.steps))

    with RunWriter(run_dir, {**config.to_dict(), "run_id": config.run_id,
                             "n_params": sum(p.numel() for p in params)}) as writer:
        init_loss, init_log_z, _ = evaluate(model, eval_batches)
        sink = ProxyStoreSink(writer, config.log_every, config.steps - 1)
        monitor = Monitor(model, optimizer, policy=Policy(WARN_ONLY), sync_every=config.log_every,
                          sinks=[sink], task="classification",  # an LM; the loop observes a detached loss
                          logits_module=getattr(model, "logits_module_name", None),
                          signal_rows=0,  # the study's figures read every row, as before sampling existed
                          config={"run_id": config.run_id}, **_sharpness_slot(config, corpus, device))
        logged: dict[int, dict] = {}

        def compute_loss(step: int):
            x, y = (t.to(device) for t in sample_batch(corpus.train, config.batch_size, config.seq_len, data_rng))
            logits = model(x)
            ce = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
            loss = ce + z_loss(logits, variant.z_loss) if variant.z_loss else ce
            logged["loss_total"] = loss
            return loss, ce  # backpropagate the total; the monitor logs the cross-entropy

        def clip(step: int) -> None:  # gradients before clipping are what the monitor read
            if config.grad_clip > 0:
                clip_by_global_norm(params, config.grad_clip)  # the one gradient transform for clipping

        def on_log(step: int, ce) -> None:
            grad = None if mlp_weight is None else mlp_weight.grad
            logged[step] = {"grad_rms_mlp0": rms(grad) if grad is not None else None,
                            "before": [p.detach().clone() for p in params],
                            "loss_total": logged.pop("loss_total")}
            writer.check_owner()
            if sink.failed is not None:
                raise sink.failed
            if not keep_going():
                raise RuntimeError("the sweep that started this run is gone")

        def after_update(step: int) -> None:
            entry = logged.pop(step, None)
            if entry is not None:
                sink.extras[step] = {"loss_total": entry["loss_total"].item(),
                                     "grad_rms_mlp0": _item(entry["grad_rms_mlp0"]),
                                     "update_rms": update_rms(entry["before"], params).item(),
                                     "time": time.time() - started}

        try:
            loop = train_loop(config.steps, compute_loss, optimizer, monitor=monitor,
                              log_every=config.log_every, log_last=True, on_log=on_log, finite_every=0,
                              lr_at=lambda step: warmup_cosine(step, config.lr, warmup, config.steps, config.min_lr),
                              before_update=clip, after_update=after_update)
            for step, entry in [(k, v) for k, v in logged.items() if isinstance(k, int)]:
                # the diverged step's row: logged before its update, which was not taken
                sink.extras[step] = {"loss_total": entry["loss_total"].item(),
                                     "grad_rms_mlp0": _item(entry["grad_rms_mlp0"]), "update_rms": 0.0,
                                     "time": time.time() - started}
        finally:
            summary = monitor.close()
        if sink.failed is not None:  # the run's rows are incomplete: not a finished run
            raise sink.failed
        nonfinite_step = loop.nonfinite_step
        step = loop.steps_done - 1 + loop.diverged  # the last step whose forward ran
        max_attn_logit = sink.max_attn_logit

        if nonfinite_step is None:
            final_loss, final_log_z, final_log_z_max = evaluate(model, eval_batches)
        else:
            final_loss = final_log_z = final_log_z_max = float("nan")
        if nonfinite_step is not None or not _finite(final_loss):
            reason = f"non-finite loss at step {nonfinite_step}" if nonfinite_step is not None else "non-finite validation loss"
        elif final_loss > init_loss:
            reason = f"final loss {final_loss:.3f} above the loss at initialisation {init_loss:.3f}"
        else:
            reason = None
        result = {
            "run_id": config.run_id, "variant": config.variant, "width": config.width,
            "depth": config.depth, "lr": config.lr, "seed": config.seed,
            "optimizer": config.optimizer, "model": config.model, "tag": config.tag,
            "warmup_fraction": config.warmup_fraction, "eps": config.eps, "weight_decay": config.weight_decay,
            "mup_simple": config.mup_simple, "precision": config.precision, "final_loss": final_loss, "init_loss": init_loss,
            "diverged": reason is not None, "diverged_reason": reason,
            "max_attn_logit": max_attn_logit, "final_log_z": final_log_z,
            "final_log_z_max": final_log_z_max, "init_log_z": init_log_z,
            "steps_done": step + 1, "wall_s": time.time() - started,
            "n_params": sum(p.numel() for p in params), "pid": os.getpid(),
            "events": summary["events"],
        }
        # numel per weight matrix, to read the stored grad_norm/<name> rows as gradient RMS
        result["param_numels"] = {name: p.numel() for name, p in model.named_parameters() if p.dim() >= 2}
        if config.sharpness_every:
            result["sharpness_checks"] = sink.sharpness
            ratios = [c["adam_ratio"] for c in sink.sharpness if _finite(c.get("adam_ratio"))]
            result["max_sharpness_ratio"] = max(ratios) if ratios else None
        writer.finish(result)
    return result
