"""Every intervention's effect, shown lasting after the step it was taken (issue 10, item 4)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monitor_test_helpers import classification_task, mlp
from stablelab.errors import UsageError
from stablelab.monitor import INTERVENTIONS, Monitor, Policy


def _schedulers():
    """name -> factory(optimizer, steps): torch's schedulers and Hugging Face's warm-up schedules."""
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    lam = torch.optim.lr_scheduler
    return {
        "lambda_warmup": lambda o, n: lam.LambdaLR(o, lambda t: min(1.0, (t + 1) / 10)),
        "onecycle": lambda o, n: lam.OneCycleLR(o, max_lr=0.1, total_steps=n + 5, cycle_momentum=False),
        "cosine_annealing": lambda o, n: lam.CosineAnnealingLR(o, T_max=n),
        "step": lambda o, n: lam.StepLR(o, step_size=7, gamma=0.5),
        "hf_linear_warmup": lambda o, n: get_linear_schedule_with_warmup(o, 5, n + 5),
        "hf_cosine_warmup": lambda o, n: get_cosine_schedule_with_warmup(o, 5, n + 5),
        "loop_writes_lr": None,   # the proxy study's pattern: the loop sets group["lr"] every step
    }


def _loop_lr(step: int) -> float:
    return 0.05 * (0.5 + 0.5 * math.cos(math.pi * step / 40))


@pytest.mark.parametrize("name", list(_schedulers()))
def test_lr_backoff_persists_through_every_scheduler(name):
    """The lr each SGD step really used (from the update itself: lr = -dw / g, plain SGD) equals
    lr_factor x the lr an identical unmonitored schedule gives, at every step after the backoff."""
    steps, backoff_step = 30, 8
    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    twin = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.05)   # the schedule, unmonitored
    factory = _schedulers()[name]
    scheduler = factory(optimizer, steps) if factory else None
    twin_scheduler = factory(twin, steps) if factory else None
    monitor = Monitor(model, optimizer, policy=Policy({"nonfinite": ["skip", "lr_backoff"]}, lr_factor=0.5),
                      sinks=(), sync_every=5)
    g = torch.Generator().manual_seed(1)
    used, expected = [], []
    for step in range(steps):
        if factory is None:
            for group in (optimizer.param_groups[0], twin.param_groups[0]):
                group["lr"] = _loop_lr(step)
        x = torch.randn(16, 4, generator=g)
        loss = model(x).pow(2).mean() * (float("nan") if step == backoff_step else 1.0)
        loss.backward()
        monitor.observe(loss)
        before, grad = model.weight.detach().clone(), model.weight.grad.clone()
        optimizer.step()
        if step > backoff_step:
            used.append(float(((before - model.weight.detach()) / grad).mean()))
            expected.append(0.5 * twin.param_groups[0]["lr"])
        optimizer.zero_grad()
        twin.step()
        if scheduler is not None:
            scheduler.step()
            twin_scheduler.step()
    monitor.close()
    assert [e.kind for e in monitor.events] == ["nonfinite", "skip", "lr_backoff"]
    assert used == pytest.approx(expected, rel=1e-3)   # float32 rounding of small updates; 1x would be off by 2x
    # the schedule itself is untouched: what the scheduler wrote is what it computes
    assert optimizer.param_groups[0]["lr"] == pytest.approx(twin.param_groups[0]["lr"])
    assert optimizer.param_groups[0]["lr_backoff"] == 0.5


def test_lr_backoff_is_kept_in_the_optimizer_state_dict():
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    INTERVENTIONS["lr_backoff"]  # the registry holds it
    from stablelab.monitor.guard import effective_lr, lr_backoff

    assert lr_backoff(optimizer, 0.25) == [pytest.approx(0.025)]
    restored = torch.optim.SGD(nn.Linear(3, 1).parameters(), lr=0.1)
    restored.load_state_dict(optimizer.state_dict())
    assert effective_lr(restored.param_groups[0]) == pytest.approx(0.025)


def _train(policy, fault_step=30, steps=60, factor=1000.0, optimizer_name="adamw"):
    x, y, g = classification_task()
    model = mlp()
    optimizer = (torch.optim.AdamW(model.parameters(), lr=1e-3) if optimizer_name == "adamw"
                 else torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    monitor = Monitor(model, optimizer, policy=policy, sinks=())
    norms, moments = [], {}
    for step in range(steps):
        index = torch.randint(0, len(x), (32,), generator=g)
        loss = F.cross_entropy(model(x[index]), y[index])
        loss.backward()
        if step == fault_step:
            for p in model.parameters():
                p.grad.mul_(factor)
        monitor.observe(loss)
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))))
        optimizer.step()
        if step == fault_step:
            moments["after"] = [optimizer.state[p].get("exp_avg", torch.zeros(1)).clone() for p in model.parameters()]
        optimizer.zero_grad()
    monitor.close()
    return monitor, norms, moments, optimizer


def test_clip_scales_the_gradient_of_that_step_to_the_running_mean():
    monitor, norms, _, _ = _train(Policy({"grad_outlier": "clip"}, clip_norm=None))
    clip = next(e for e in monitor.events if e.kind == "clip")
    assert clip.step == 30 and norms[30] == pytest.approx(clip.data["max_norm"], rel=1e-4)
    assert norms[30] < 3 * statistics_mean(norms[10:30])      # the spike never reached the optimizer
    assert not monitor.skipped_steps


def statistics_mean(values):
    return sum(values) / len(values)


def test_reset_moments_zeroes_the_moments_then_training_goes_on():
    monitor, _, moments, optimizer = _train(Policy({"grad_outlier": ["reset_moments", "skip"]}))
    assert [e.kind for e in monitor.events] == ["grad_outlier", "skip", "reset_moments"]
    assert all(torch.count_nonzero(m) == 0 for m in moments["after"])   # zeroed, and the step skipped
    assert all(torch.count_nonzero(optimizer.state[p]["exp_avg"]) > 0 for p in optimizer.state)  # refilled


def test_policy_refuses_bad_input_with_one_line():
    with pytest.raises(UsageError, match="unknown intervention"):
        Policy({"nonfinite": "explode"})
    with pytest.raises(UsageError, match="lr_factor"):
        Policy(lr_factor=2.0)
    with pytest.raises(UsageError, match="skip_mode"):
        Policy(skip_mode="gpu")
