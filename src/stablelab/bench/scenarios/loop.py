"""The training loop a scenario runs, with its optimizer and schedule, calling the detector's hook."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn

from stablelab.bench.scenarios.base import _PROBE_AFTER_FAULT, Scenario, Trace
from stablelab.bench.scenarios.faults import (_FaultState, _fault_batch, _plant_gradient_fault,
                                             _stops_training, lr_multiplier)
from stablelab.bench.scenarios.tasks import FAMILIES, Task


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



_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}



def run_scenario(scenario: Scenario, hook, *, seed: int = 0, device: str = "cpu",
                 probe_steps: tuple[int, ...] = ()) -> Trace:
    """Train `scenario` once with `hook` watching; deterministic for a given seed.

    Args:
        scenario: what to train and what to plant.
        hook: `attach(model, optimizer, task=...)`, `observe(step, loss)` (real gradients, after the planted
            gradient fault, before the optimizer step), `close()`. An exception from `observe`
            named TrainingStopped or with `stops_training = True` ends the run cleanly.
        seed: model initialisation and batch order.
        device: "cpu" or an accelerator; threads are pinned to 1 for the run.
        probe_steps: more steps to read the held-out probe loss after (a twin's fault steps).
    Returns:
        The run's Trace."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(scenario, hook, seed, device, probe_steps)
    finally:
        torch.set_num_threads(threads)



def _train(scenario: Scenario, hook, seed: int, device: str, extra_probes: tuple[int, ...] = ()) -> Trace:
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
    probe_steps = {scenario.steps - 1, *extra_probes}
    if scenario.fault_step is not None:
        probe_steps |= {scenario.fault_step - 1, scenario.fault_step + _PROBE_AFTER_FAULT}

    trace = Trace([], [], {}, False, None, 0.0)
    hook.attach(model, optimizer, task=task.task)
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
