"""SPAM: Adam with spike-aware clipping and periodic momentum resets.

Huang et al. 2025, "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training",
arXiv 2501.06842; official code TianjinYellow/SPAM-Optimizer, galore_torch/SPAM.py.
Stable-SPAM is in `stablelab.optim.stable_spam` (re-exported here).
"""

from __future__ import annotations

import math

import torch

from stablelab.optim.base import StabilityOptimizer, adam_moments_, bias_correction, column, use_foreach
from stablelab.optim.transforms import reset_warmup_scale, spike_clip, spike_clip_active


def spam(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
         exp_avg_sqs: list[torch.Tensor], *, step: int, lr: float, beta1: float, beta2: float, eps: float,
         weight_decay: float, threshold: float, reset_interval: int, warmup_steps: int, clip_warmup: int,
         foreach: bool | None = None) -> None:
    """One SPAM step, in place on `params`, `exp_avgs` and `exp_avg_sqs` (the functional core).

    Args:
        params, grads, exp_avgs, exp_avg_sqs: lists of tensors of equal length (grads not modified).
        step: the step count t (from 1) of these tensors, this step included.
        lr, beta1, beta2, eps, weight_decay: Adam's, with decoupled decay p -= lr * wd * p.
        threshold: spike threshold theta (0 turns clipping off).
        reset_interval: zero m and v every this many steps (0: never).
        warmup_steps: length of the cosine ramp of the step size after a reset.
        clip_warmup: clipping starts this many steps after the start and after each reset.
        foreach: the `_multi_tensor_spam` path (default: where foreach kernels exist).
    """
    reset = reset_interval > 0 and step % reset_interval == 0
    clip = threshold > 0 and spike_clip_active(step, reset_interval, clip_warmup)
    step_size = lr * math.sqrt(bias_correction(beta2, step)) / bias_correction(beta1, step)
    step_size *= reset_warmup_scale(step, reset_interval, warmup_steps)
    path = _multi_tensor_spam if use_foreach(foreach, params) else _single_tensor_spam
    path(params, grads, exp_avgs, exp_avg_sqs, beta1=beta1, beta2=beta2, eps=eps, threshold=threshold,
         reset=reset, clip=clip, step_size=step_size, decay=1.0 - lr * weight_decay)


def _single_tensor_spam(params, grads, exp_avgs, exp_avg_sqs, *, beta1, beta2, eps, threshold, reset, clip,
                        step_size, decay):
    for param, grad, exp_avg, exp_avg_sq in zip(params, grads, exp_avgs, exp_avg_sqs):
        if reset:  # momentum reset (the step count is kept)
            exp_avg.zero_()
            exp_avg_sq.zero_()
        if clip:
            grad = spike_clip([grad], [exp_avg_sq], threshold)[0]
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        param.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(eps), value=-step_size)
        if decay != 1.0:
            param.mul_(decay)


def _multi_tensor_spam(params, grads, exp_avgs, exp_avg_sqs, *, beta1, beta2, eps, threshold, reset, clip,
                       step_size, decay):
    if reset:
        torch._foreach_zero_(exp_avgs)
        torch._foreach_zero_(exp_avg_sqs)
    if clip:
        grads = spike_clip(grads, exp_avg_sqs, threshold)
    adam_moments_(exp_avgs, exp_avg_sqs, grads, beta1, beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, value=-step_size)
    if decay != 1.0:
        torch._foreach_mul_(params, decay)


class SPAM(StabilityOptimizer):
    """Spike-aware Adam with momentum reset.

    Per step t (per tensor): every `reset_interval` steps m and v are zeroed (the step count is not);
    elements with g^2 > threshold * v are clipped to sign(g) sqrt(threshold * v) (v: previous raw
    second moment), only when t >= `clip_warmup` and (t mod reset_interval) >= `clip_warmup`;
    Adam update lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), multiplied after each reset
    by a cosine ramp over `warmup_steps` (`reset_warmup_scale`: 0.01 on the reset step, as the
    official `CosineDecay.get_dr(0)`); then decoupled decay p -= lr * wd * p. The math is the
    functional core `spam`.

    Defaults are the official code's: lr 1e-3, betas (0.9, 0.999), eps 1e-6, threshold 5000,
    reset_interval 500 (`update_proj_gap`), warmup_steps 150 (`warmup_epoch`), clip_warmup 20
    (`grad_accu_steps`). Differences on purpose: the step counters are per tensor (torch's
    convention; the official code counts optimizer calls: the same when every parameter gets a
    gradient each step); the optional random sparse-momentum masks (`density` < 1) are not
    implemented (dense moments, the official default); p.grad is never modified.
    pytorch-optimizer's SPAM runs the warm-up ramp one step ahead of the official code (0.010939
    instead of 0.01 on the reset step at warmup 50); we follow the official code.
    """

    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, threshold: float = 5000.0, reset_interval: int = 500,
                 warmup_steps: int = 150, clip_warmup: int = 20, *, foreach: bool | None = None):
        if threshold < 0 or reset_interval < 0 or warmup_steps < 0 or clip_warmup < 0:
            raise ValueError("SPAM: threshold, reset_interval, warmup_steps and clip_warmup must be >= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      threshold=threshold, reset_interval=reset_interval,
                                      warmup_steps=warmup_steps, clip_warmup=clip_warmup, foreach=foreach))

    def _step_tensors(self, group, step, params, grads, states, foreach):
        beta1, beta2 = group["betas"]
        spam(params, grads, column(states, "exp_avg"), column(states, "exp_avg_sq"), step=step, lr=group["lr"],
             beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
             threshold=group["threshold"], reset_interval=group["reset_interval"],
             warmup_steps=group["warmup_steps"], clip_warmup=group["clip_warmup"], foreach=foreach)


from stablelab.optim.stable_spam import StableSPAM, stable_spam  # noqa: E402,F401  (one import place for both)
