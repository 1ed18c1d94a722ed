"""The labelled scenario suite of the detection-quality benchmark: healthy runs (no instability, so
every warning is a false alarm) and runs with a fault planted at a known step (a warning within
[fault_step, fault_step + window] counts as a detection).

The models are the ones users have, not stablelab's reference transformer: an MLP and a CNN on
scikit-learn's digits, MLP regressions, a causal byte LM from torch's nn.TransformerEncoder and a
Hugging Face GPT-2. One generic loop trains them all:

    for step in range(steps):
        for each of `accumulation` micro-batches:      # batch faults change the batch here
            loss = loss_fn(model(x), y)                # under autocast when settings["amp"]
            (scaler.scale(loss / accumulation) if scaler else loss / accumulation).backward()
        scaler.unscale_(optimizer)                     # GradScaler only: real gradients from here
        plant the gradient fault                       # grad_spike
        hook.observe(step, mean micro-batch loss)      # the monitor's moment
        optimizer.step() / scaler.step(optimizer); scaler.update()
        scheduler.step(); optimizer.zero_grad()

    trace = run_scenario(SCENARIOS["grad_spike_1000x"], monitor_hook, seed=0)
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("healthy", "fault")
FAULTS = ("grad_spike", "nan_batch", "inf_batch", "random_labels", "shuffled_tokens", "lr_runaway",
          "lr_jump", "attn_logit_growth", "logit_drift", "bf16_collapse")
_PROBE_AFTER_FAULT = 30  # the held-out probe is read at fault_step - 1 and fault_step + 30


@dataclass(frozen=True)
class Scenario:
    """One labelled run: a model family, its training settings and, for a fault, what is planted
    where. `settings` holds the training switches (optimizer, lr, scheduler, amp, accumulation,
    dtype, batch) and the fault's parameters (factor, rate, offset_per_step, growth)."""

    name: str
    kind: str
    family: str
    steps: int
    quick: bool
    fault: str | None = None
    fault_step: int | None = None
    window: int = 20
    settings: dict = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {self.family!r}")
        if (self.kind == "fault") != (self.fault is not None) or (self.fault is None) != (self.fault_step is None):
            raise ValueError(f"{self.name}: a fault scenario names its fault and fault_step, a healthy one neither")
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {self.fault!r}")


@dataclass
class Trace:
    """What one run did, as the benchmark scores it."""

    losses: list[float]  # training loss of every optimizer step (mean over micro-batches)
    lrs: list[float]  # lr of param group 0 used at each step
    probe_losses: dict[int, float]  # held-out probe loss at fault_step - 1, fault_step + 30, the last step
    diverged: bool  # the loss became non-finite and stayed so
    stopped_at: int | None  # the step where the hook stopped training
    wall_s: float


class NullHook:
    """A hook that watches nothing: the healthy baseline of the loop's cost, and for tests."""

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass

    def observe(self, step: int, loss: torch.Tensor) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- data (no downloads)

@functools.lru_cache(maxsize=None)
def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits, stratified 75/25 split, standardised with the training split's statistics."""
    from stablelab.data.digits import load_digits

    data = load_digits(test_fraction=0.25, seed=0)
    mean, std = data.x_train.mean(0), data.x_train.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # pixels that are always 0 stay 0
    return (data.x_train - mean) / std, data.y_train, (data.x_test - mean) / std, data.y_test


@functools.lru_cache(maxsize=None)
def _regression(outputs: int, n: int = 2560, features: int = 8) -> tuple[torch.Tensor, ...]:
    """A smooth synthetic target, y_k = sin(x a_k) + 0.5 tanh(x b_k) + noise, standardised; the
    last 512 samples are held out. Fixed data (seed 1234), whatever the run's seed."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, features, generator=g)
    a = torch.randn(features, outputs, generator=g) / math.sqrt(features)
    b = torch.randn(features, outputs, generator=g) / math.sqrt(features)
    y = torch.sin(2.0 * x @ a) + 0.5 * torch.tanh(x @ b) + 0.05 * torch.randn(n, outputs, generator=g)
    y = (y - y.mean(0)) / y.std(0)
    return x[:-512], y[:-512], x[-512:], y[-512:]


@functools.lru_cache(maxsize=None)
def _byte_corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """The bytes of argparse's source (standard library, ~100 kB, vocab 256); the last 10% held out."""
    import argparse
    import inspect

    tokens = torch.tensor(list(inspect.getsource(argparse).encode("utf-8")), dtype=torch.long)
    cut = int(0.9 * len(tokens))
    return tokens[:cut], tokens[cut:]


def _windows(tokens: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    return tokens[starts[:, None] + torch.arange(length)]


# ---------------------------------------------------------------- models

class DigitsMLP(nn.Module):
    """64 -> 128 -> 128 -> 10, ReLU."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)  # registered last: the monitor's default logits module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class DigitsCNN(nn.Module):
    """1x8x8 -> conv 16 -> conv 32 -> max-pool -> 64 -> 10, ReLU."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class RegressionMLP(nn.Module):
    """8 -> 64 -> 64 -> outputs, GELU."""

    def __init__(self, outputs: int, features: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU())
        self.head = nn.Linear(64, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class EncoderLM(nn.Module):
    """A causal byte LM from torch's own blocks: token + learned position embeddings, pre-norm
    nn.TransformerEncoder under a causal mask (nn.MultiheadAttention: no qk-layernorm), LayerNorm, head."""

    def __init__(self, d_model: int = 32, n_layers: int = 2, n_heads: int = 2, context: int = 64, vocab: int = 256):
        super().__init__()
        self.token = nn.Embedding(vocab, d_model)  # the first nn.Embedding: token faults poison its output
        self.position = nn.Embedding(context, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        x = self.token(tokens) + self.position(torch.arange(t, device=tokens.device))
        x = self.encoder(x, mask=self.causal[:t, :t], is_causal=True)
        return self.head(self.norm(x))


def _gpt2(context: int = 64) -> nn.Module:
    """Hugging Face GPT-2 from a config (no download): 2 layers, 2 heads, width 32, bytes."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=256, n_positions=context,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=None, eos_token_id=None)  # GPT-2's 50256 lies outside 256 bytes
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # the loss it would pick anyway, named so transformers does not warn
    return model


# ---------------------------------------------------------------- families: model, batches, probe, loss

@dataclass
class Task:
    """A family made concrete: the model and how to feed it and score it."""

    model: nn.Module
    sample: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]  # one training batch
    probe: tuple[torch.Tensor, torch.Tensor]  # a fixed held-out batch
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    head: nn.Module  # the module whose output is the logits (the output for a regression)
    classes: int | None = None  # for random labels
    embedding: nn.Module | None = None  # token inputs: float faults poison this module's output


def _rows(x: torch.Tensor, y: torch.Tensor, batch: int, device: str, dtype: torch.dtype):
    """Batches of rows as DataLoader(shuffle=True, drop_last=True) gives them: a fresh permutation
    from the run's generator every epoch."""
    x, y = x.to(device, dtype), y.to(device)
    pending: list[torch.Tensor] = []

    def sample(g: torch.Generator):
        if not pending:
            pending.extend(torch.randperm(len(x), generator=g).to(device).split(batch)[: len(x) // batch])
        index = pending.pop(0)
        return x[index], y[index]

    return sample


def _classification(model, x, y, x_probe, y_probe, batch, device, dtype) -> Task:
    return Task(model, _rows(x, y, batch, device, dtype), (x_probe.to(device, dtype), y_probe.to(device)),
                lambda m, inputs, targets: F.cross_entropy(m(inputs), targets), model.head, classes=10)


def _mlp_digits(settings: dict, device: str, dtype: torch.dtype) -> Task:
    x, y, x_probe, y_probe = _digits()
    return _classification(DigitsMLP(), x, y, x_probe, y_probe, settings.get("batch", 64), device, dtype)


def _cnn_digits(settings: dict, device: str, dtype: torch.dtype) -> Task:
    x, y, x_probe, y_probe = _digits()
    x, x_probe = x.reshape(-1, 1, 8, 8), x_probe.reshape(-1, 1, 8, 8)
    return _classification(DigitsCNN(), x, y, x_probe, y_probe, settings.get("batch", 64), device, dtype)


def _regression_family(outputs: int):
    def build(settings: dict, device: str, dtype: torch.dtype) -> Task:
        x, y, x_probe, y_probe = _regression(outputs)
        model = RegressionMLP(outputs)
        return Task(model, _rows(x, y.to(dtype), settings.get("batch", 64), device, dtype),
                    (x_probe.to(device, dtype), y_probe.to(device, dtype)),
                    lambda m, inputs, targets: F.mse_loss(m(inputs), targets), model.head)

    return build


def _token_batches(settings: dict, device: str, length: int):
    """Random windows of `length` bytes for training; 16 evenly spaced held-out windows as the probe."""
    train, held_out = _byte_corpus()
    batch = settings.get("batch", 16)

    def sample(g: torch.Generator):
        return _windows(train, torch.randint(len(train) - length, (batch,), generator=g), length).to(device)

    probe = _windows(held_out, torch.linspace(0, len(held_out) - length - 1, 16).long(), length).to(device)
    return sample, probe


def _encoder_lm(settings: dict, device: str, dtype: torch.dtype) -> Task:
    context = settings.get("context", 64)
    model = EncoderLM(d_model=settings.get("d_model", 32), n_layers=settings.get("n_layers", 2),
                      n_heads=settings.get("n_heads", 2), context=context)
    windows, probe = _token_batches(settings, device, context + 1)

    def sample(g: torch.Generator):
        window = windows(g)
        return window[:, :-1], window[:, 1:]  # next-byte targets

    def loss(m, tokens, targets):
        logits = m(tokens)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    return Task(model, sample, (probe[:, :-1], probe[:, 1:]), loss, model.head, classes=256, embedding=model.token)


def _hf_gpt2(settings: dict, device: str, dtype: torch.dtype) -> Task:
    context = settings.get("context", 64)
    model = _gpt2(context)
    windows, probe = _token_batches(settings, device, context)

    def sample(g: torch.Generator):
        window = windows(g)
        return window, window.clone()  # labels = inputs: GPT-2 shifts them itself

    def loss(m, tokens, labels):
        return m(input_ids=tokens, labels=labels).loss
    return Task(model, sample, (probe, probe.clone()), loss, model.lm_head, classes=256,
                embedding=model.transformer.wte)


FAMILIES: dict[str, Callable[[dict, str, torch.dtype], Task]] = {
    "mlp_digits": _mlp_digits,
    "cnn_digits": _cnn_digits,
    "regression_1": _regression_family(1),
    "regression_multi": _regression_family(4),
    "encoder_lm": _encoder_lm,
    "hf_gpt2": _hf_gpt2,
}


# ---------------------------------------------------------------- optimizers and schedules

def _optimizer(settings: dict, model: nn.Module) -> torch.optim.Optimizer:
    name, lr = settings.get("optimizer", "adamw"), settings.get("lr", 1e-3)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=settings.get("weight_decay", 0.01))
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if name == "sgd_momentum":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=settings.get("momentum", 0.9))
    raise ValueError(f"unknown optimizer {name!r}")


def warmup_cosine(warmup: int, total: int, floor: float = 0.1) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine down to `floor` at `total` (a LambdaLR factor)."""

    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        progress = min(1.0, (t - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _scheduler(settings: dict, optimizer: torch.optim.Optimizer, steps: int):
    """The lr schedule over `horizon` steps (a fault run keeps its healthy run's schedule), else `steps`."""
    name, warmup = settings.get("scheduler"), settings.get("warmup", 100)
    steps = max(steps, settings.get("horizon", steps))
    schedulers = torch.optim.lr_scheduler
    if name is None:
        return None
    if name == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.01 * settings.get("lr", 1e-3))
    if name == "step":
        return schedulers.StepLR(optimizer, step_size=max(1, steps // 3), gamma=0.3)
    if name == "onecycle":  # +1: OneCycleLR refuses a step past total_steps
        return schedulers.OneCycleLR(optimizer, max_lr=settings.get("lr", 1e-3), total_steps=steps + 1)
    if name == "warmup_cosine":
        return schedulers.LambdaLR(optimizer, warmup_cosine(min(warmup, steps), steps))
    if name == "hf_cosine":
        from transformers import get_cosine_schedule_with_warmup

        return get_cosine_schedule_with_warmup(optimizer, min(warmup, steps), steps)
    raise ValueError(f"unknown scheduler {name!r}")


# ---------------------------------------------------------------- faults

def lr_multiplier(scenario: Scenario, step: int) -> float:
    """The factor on the schedule's lr at `step`: lr_runaway compounds `rate` from fault_step on
    (rate^(step - fault_step + 1)); lr_jump multiplies by `factor` from fault_step on."""
    if scenario.fault_step is None or step < scenario.fault_step:
        return 1.0
    if scenario.fault == "lr_runaway":
        return scenario.settings.get("rate", 1.03) ** (step - scenario.fault_step + 1)
    if scenario.fault == "lr_jump":
        return scenario.settings.get("factor", 100)
    return 1.0


def _logits_transform(scenario: Scenario, step: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """logit_drift adds offset_per_step * (steps since the fault) to every logit (softmax-invariant:
    the loss is unchanged while log Z drifts; Wortsman et al. 2023, sec 3.2); bf16_collapse scales
    the logits by growth^(steps since the fault) until softmax collapses in bfloat16 (Prieto et al. 2025, sec 3)."""
    if scenario.fault_step is None or step < scenario.fault_step:
        return None
    elapsed = step - scenario.fault_step + 1
    if scenario.fault == "logit_drift":
        offset = scenario.settings.get("offset_per_step", 0.5) * elapsed
        return lambda logits: logits + offset
    if scenario.fault == "bf16_collapse":
        scale = scenario.settings.get("growth", 1.05) ** elapsed
        return lambda logits: logits * scale
    return None


class _FaultState:
    """What the model's forward hooks need to know: the current step, and whether to poison."""

    def __init__(self, scenario: Scenario, task: Task):
        self.scenario, self.step, self.poison = scenario, 0, None
        task.head.register_forward_hook(self._on_logits)  # before hook.attach: the monitor sees the fault
        if task.embedding is not None:
            task.embedding.register_forward_hook(self._on_embedding)

    def _on_logits(self, _module, _inputs, output):
        transform = _logits_transform(self.scenario, self.step)
        return None if transform is None else transform(output)

    def _on_embedding(self, _module, _inputs, output):
        if self.poison is None:
            return None
        output = output.clone()
        output.view(-1)[0] = self.poison
        return output


def _fault_batch(scenario: Scenario, task: Task, state: _FaultState, inputs, targets, g: torch.Generator):
    """The batch at fault_step: one non-finite input element, random labels or shuffled targets."""
    fault = scenario.fault
    if fault in ("nan_batch", "inf_batch"):
        value = math.nan if fault == "nan_batch" else math.inf
        if task.embedding is not None:  # token ids cannot hold NaN: poison the embedding's output
            state.poison = value
        else:
            inputs = inputs.clone()
            inputs.view(-1)[0] = value
    elif fault == "random_labels":
        targets = torch.randint(task.classes, targets.shape, generator=g).to(targets.device)
    elif fault == "shuffled_tokens":  # a random permutation of the targets within each sequence
        order = torch.rand(targets.shape, generator=g).argsort(dim=-1).to(targets.device)
        targets = targets.gather(-1, order)
    return inputs, targets


def _plant_gradient_fault(scenario: Scenario, step: int, model: nn.Module) -> None:
    """grad_spike: every gradient times `factor`, at fault_step only (after unscaling)."""
    if scenario.fault == "grad_spike" and step == scenario.fault_step:
        factor = scenario.settings.get("factor", 1000)
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)


def _stops_training(error: BaseException) -> bool:
    return type(error).__name__ == "TrainingStopped" or getattr(error, "stops_training", False) is True


# ---------------------------------------------------------------- the loop

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run_scenario(scenario: Scenario, hook, *, seed: int = 0, device: str = "cpu") -> Trace:
    """Train `scenario` once with `hook` watching; deterministic for a given seed.

    Args:
        scenario: what to train and what to plant.
        hook: `attach(model, optimizer)`, `observe(step, loss)` (real gradients, after the planted
            gradient fault, before the optimizer step), `close()`. An exception from `observe`
            named TrainingStopped or with `stops_training = True` ends the run cleanly.
        seed: model initialisation and batch order.
        device: "cpu" or an accelerator; threads are pinned to 1 for the run.
    Returns:
        The run's Trace."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(scenario, hook, seed, device)
    finally:
        torch.set_num_threads(threads)


def _train(scenario: Scenario, hook, seed: int, device: str) -> Trace:
    start = time.perf_counter()
    settings = scenario.settings
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    dtype = _DTYPES[settings.get("dtype", "float32")]
    task = FAMILIES[scenario.family](settings, device, dtype)
    model = task.model.to(device, dtype)
    model.train()
    optimizer = _optimizer(settings, model)
    scheduler = _scheduler(settings, optimizer, scenario.steps)
    state = _FaultState(scenario, task)
    device_type = torch.device(device).type
    amp = settings.get("amp")
    amp_dtype = _DTYPES[amp] if amp is not None else torch.float32
    autocast = lambda: torch.autocast(device_type, dtype=amp_dtype, enabled=amp is not None)  # noqa: E731
    scaler = torch.amp.GradScaler(device_type) if amp == "float16" else None
    accumulation = settings.get("accumulation", 1)
    probe_steps = {scenario.steps - 1}
    if scenario.fault_step is not None:
        probe_steps |= {scenario.fault_step - 1, scenario.fault_step + _PROBE_AFTER_FAULT}

    trace = Trace([], [], {}, False, None, 0.0)
    hook.attach(model, optimizer)
    try:
        for step in range(scenario.steps):
            state.step = step
            total = torch.zeros((), device=device)
            for _ in range(accumulation):
                inputs, targets = task.sample(g)
                if step == scenario.fault_step:
                    inputs, targets = _fault_batch(scenario, task, state, inputs, targets, g)
                with autocast():
                    loss = task.loss(model, inputs, targets)
                state.poison = None
                scaled = loss / accumulation  # the mean over micro-batches, as one large batch
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                total += loss.detach().float()
            if scaler is not None:
                scaler.unscale_(optimizer)
            _plant_gradient_fault(scenario, step, model)
            scheduled = [group["lr"] for group in optimizer.param_groups]
            multiplier = lr_multiplier(scenario, step)
            for group, lr in zip(optimizer.param_groups, scheduled):
                group["lr"] = lr * multiplier
            mean_loss = total / accumulation
            host_loss = mean_loss.item()
            trace.losses.append(host_loss)
            trace.lrs.append(optimizer.param_groups[0]["lr"])
            try:
                hook.observe(step, mean_loss)
            except Exception as error:
                if not _stops_training(error):
                    raise
                trace.stopped_at = step
                break
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            for group, lr in zip(optimizer.param_groups, scheduled):  # the fault rides on the schedule
                group["lr"] = lr
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if step in probe_steps:
                trace.probe_losses[step] = _probe_loss(task, model, autocast)
    finally:
        hook.close()
    trace.diverged = bool(trace.losses) and not math.isfinite(trace.losses[-1])  # non-finite to the end
    trace.wall_s = time.perf_counter() - start
    return trace


@torch.no_grad()
def _probe_loss(task: Task, model: nn.Module, autocast) -> float:
    """The loss on the fixed held-out batch, in eval mode under the run's dtype policy."""
    model.eval()
    try:
        with autocast():
            return float(task.loss(model, *task.probe).float())
    finally:
        model.train()


# ---------------------------------------------------------------- the registry

def _healthy(name: str, family: str, steps: int, quick: bool, description: str, **settings) -> Scenario:
    return Scenario(name, "healthy", family, steps, quick, settings=settings, description=description)


def _fault(name: str, base: Scenario, fault: str, fault_step: int, steps: int, quick: bool, description: str,
           window: int = 20, **settings) -> Scenario:
    """A fault planted in a healthy scenario's training setup (its family, settings and lr schedule
    over the healthy run's length, so the fault lands mid-training)."""
    settings = {**base.settings, "horizon": base.steps, **settings}
    return replace(base, name=name, kind="fault", steps=steps, quick=quick, fault=fault, fault_step=fault_step,
                   window=window, settings=settings, description=description)


def _build() -> dict[str, Scenario]:
    h = [
        mlp_adamw := _healthy(
            "mlp_digits_adamw", "mlp_digits", 2000, True,
            "MLP on digits, AdamW lr 1e-3, batch 64, constant lr: reaches 100% train accuracy.",
            optimizer="adamw", lr=1e-3),
        mlp_sgd := _healthy(
            "mlp_digits_sgd_cosine", "mlp_digits", 2000, False,
            "MLP on digits, SGD momentum 0.9 lr 0.05 with CosineAnnealingLR.",
            optimizer="sgd_momentum", lr=0.05, scheduler="cosine"),
        _healthy(
            "mlp_digits_bf16", "mlp_digits", 2000, False,
            "MLP on digits, AdamW under bfloat16 autocast (float32 weights).",
            optimizer="adamw", lr=1e-3, amp="bfloat16"),
        mlp_fp16 := _healthy(
            "mlp_digits_fp16", "mlp_digits", 2000, False,
            "MLP on digits, AdamW under float16 autocast with GradScaler (the monitor sees unscaled gradients).",
            optimizer="adamw", lr=1e-3, amp="float16"),
        _healthy(
            "mlp_digits_accum4", "mlp_digits", 1500, False,
            "MLP on digits, AdamW, 4 micro-batches of 16 accumulated per step (loss / 4 each).",
            optimizer="adamw", lr=1e-3, batch=16, accumulation=4),
        cnn := _healthy(
            "cnn_digits_onecycle", "cnn_digits", 1200, True,
            "Small CNN on digits as 1x8x8 images, Adam with OneCycleLR (max lr 2e-3).",
            optimizer="adam", lr=2e-3, scheduler="onecycle"),
        reg1 := _healthy(
            "regression_1_adamw", "regression_1", 2000, True,
            "One-output MSE regression of a smooth synthetic target, AdamW lr 1e-3, batch 128.",
            optimizer="adamw", lr=1e-3, batch=128),
        reg1_sgd := _healthy(
            "regression_1_sgd_step", "regression_1", 2000, False,
            "One-output MSE regression, SGD momentum 0.9 lr 0.01 with StepLR (x0.3 every third of the run).",
            optimizer="sgd_momentum", lr=0.01, scheduler="step", batch=128),
        _healthy(
            "regression_multi_adamw", "regression_multi", 2500, False,
            "Four-output MSE regression of smooth synthetic targets, AdamW lr 1e-3 with CosineAnnealingLR.",
            optimizer="adamw", lr=1e-3, scheduler="cosine", batch=128),
        _healthy(
            "regression_multi_fp16", "regression_multi", 1500, False,
            "Four-output regression under float16 autocast with GradScaler.",
            optimizer="adamw", lr=1e-3, scheduler="cosine", batch=128, amp="float16"),
        lm := _healthy(
            "encoder_lm_warmup_cosine", "encoder_lm", 1200, True,
            "Causal byte LM from nn.TransformerEncoder (d 32, 2 layers) on argparse's source, AdamW lr 3e-3, "
            "linear warm-up + cosine through LambdaLR.",
            optimizer="adamw", lr=3e-3, scheduler="warmup_cosine", warmup=100),
        _healthy(
            "encoder_lm_bf16", "encoder_lm", 800, False,
            "The encoder LM under bfloat16 autocast.",
            optimizer="adamw", lr=3e-3, scheduler="warmup_cosine", warmup=100, amp="bfloat16"),
        _healthy(
            "encoder_lm_accum4", "encoder_lm", 800, False,
            "The encoder LM with 4 micro-batches of 4 sequences accumulated per step.",
            optimizer="adamw", lr=3e-3, scheduler="warmup_cosine", warmup=100, batch=4, accumulation=4),
        gpt2 := _healthy(
            "hf_gpt2_cosine", "hf_gpt2", 1000, True,
            "Hugging Face GPT-2 from a config (width 32, 2 layers, 2 heads, bytes), AdamW lr 3e-3 with "
            "transformers' get_cosine_schedule_with_warmup; loss from labels=.",
            optimizer="adamw", lr=3e-3, scheduler="hf_cosine", warmup=100),
        _healthy(
            "hf_gpt2_fp16", "hf_gpt2", 1000, False,
            "GPT-2 under float16 autocast with GradScaler.",
            optimizer="adamw", lr=3e-3, scheduler="hf_cosine", warmup=100, amp="float16"),
    ]
    f = [
        _fault("grad_spike_10x", mlp_sgd, "grad_spike", 200, 300, True,
               "Every gradient x10 for one step (SGD momentum: the spike stays in the momentum buffer).",
               factor=10),
        _fault("grad_spike_100x", reg1_sgd, "grad_spike", 600, 700, False,
               "Every gradient x100 for one step of SGD-momentum regression.", factor=100),
        _fault("grad_spike_1000x", mlp_sgd, "grad_spike", 200, 300, True,
               "Every gradient x1000 for one step of SGD momentum on the digits MLP.", factor=1000),
        _fault("grad_spike_1000x_adamw", mlp_adamw, "grad_spike", 200, 300, False,
               "Every gradient x1000 for one AdamW step: the second moment then damps updates for hundreds of steps.",
               factor=1000),
        _fault("grad_spike_1000x_fp16", mlp_fp16, "grad_spike", 200, 300, False,
               "Every unscaled gradient x1000 for one step under float16 autocast + GradScaler.", factor=1000),
        _fault("nan_batch", mlp_adamw, "nan_batch", 200, 260, True,
               "One NaN input element at fault_step: loss and gradients are NaN, AdamW spreads them to every weight."),
        _fault("nan_batch_fp16", mlp_fp16, "nan_batch", 200, 260, False,
               "One NaN input element under GradScaler: the scaler skips the step and halves its scale."),
        _fault("nan_batch_lm", lm, "nan_batch", 200, 260, False,
               "One NaN in the encoder LM's token-embedding output at fault_step."),
        _fault("inf_batch", cnn, "inf_batch", 200, 260, True,
               "One +inf input pixel at fault_step: inf - inf in the convolution makes the loss NaN."),
        _fault("inf_batch_gpt2", gpt2, "inf_batch", 200, 260, False,
               "One +inf in GPT-2's token-embedding output at fault_step."),
        _fault("random_labels", mlp_adamw, "random_labels", 200, 300, True,
               "One batch with uniformly random labels at fault_step (the classifier is confident by then)."),
        _fault("random_labels_cnn", cnn, "random_labels", 200, 300, False,
               "One CNN batch with random labels at fault_step."),
        _fault("shuffled_tokens", lm, "shuffled_tokens", 200, 300, True,
               "One encoder-LM batch whose target bytes are shuffled within each sequence."),
        _fault("shuffled_tokens_gpt2", gpt2, "shuffled_tokens", 200, 300, False,
               "One GPT-2 batch whose labels are shuffled within each sequence."),
        # a runaway builds over many steps: any warning until the run's end counts, and what
        # matters is the lead time before the loss doubles
        _fault("lr_runaway", mlp_adamw, "lr_runaway", 200, 450, True,
               "From fault_step on the lr compounds x1.03 per step (x1600 after 250 steps).", window=250, rate=1.03),
        _fault("lr_runaway_lm", lm, "lr_runaway", 200, 450, False,
               "The encoder LM's warm-up + cosine lr compounds x1.03 per step from fault_step on.", window=250,
               rate=1.03),
        _fault("lr_jump", reg1, "lr_jump", 400, 500, True,
               "The regression's AdamW lr becomes 100x at fault_step and stays.", factor=100),
        _fault("lr_jump_gpt2", gpt2, "lr_jump", 200, 300, False,
               "GPT-2's scheduled lr becomes 100x at fault_step and stays.", factor=100),
        _fault("logit_drift", mlp_adamw, "logit_drift", 200, 350, True,
               "From fault_step on every logit gets +0.5 per step: the loss is unchanged, log Z drifts.",
               window=120, offset_per_step=0.5),
        _fault("logit_drift_lm", lm, "logit_drift", 200, 350, False,
               "The encoder LM's logits drift by +0.5 per step from fault_step on.", window=120, offset_per_step=0.5),
        _fault("bf16_collapse", mlp_adamw, "bf16_collapse", 150, 260, True,
               "A bfloat16 MLP (weights, inputs, loss; AdamW lr 3e-4, so no sample collapses before the fault) "
               "whose logits are scaled x1.05 per step from fault_step: softmax collapses in bfloat16 while "
               "float32 still sees material non-top mass.",
               window=100, dtype="bfloat16", lr=3e-4, growth=1.05),
        _fault("attn_logit_growth", lm, "attn_logit_growth", 0, 300, True,
               "The encoder LM at a constant lr 0.1 without weight decay: without qk-layernorm the max "
               "attention logit grows past 1e3 within ~40 steps and 1e4 within ~150 (Wortsman et al. 2023, "
               "sec 3.1); nothing is planted, the whole run counts.",
               window=300, lr=0.1, scheduler=None, weight_decay=0.0),
    ]
    registry = {}
    for scenario in h + f:
        if scenario.name in registry:
            raise ValueError(f"duplicate scenario name {scenario.name!r}")
        registry[scenario.name] = scenario
    return registry


SCENARIOS: dict[str, Scenario] = _build()


def suite(quick: bool) -> list[Scenario]:
    """The scenarios to run: the quick subset, or every scenario."""
    return [s for s in SCENARIOS.values() if s.quick or not quick]
