"""Gradient estimators for sign(): the straight-through estimator (STE) and ReSTE.

A binary network computes sign(w) forward; its true derivative is 0 almost everywhere, so training
needs an estimator for the backward pass.

STE (Courbariaux et al. 2016, BinaryNet; the "hardtanh" STE):
    forward sign(x);   backward  d/dx ~ 1 for |x| <= 1,  0 for |x| > 1

ReSTE (Wu, Zheng, Liu, Zheng 2023, "Estimator Meets Equilibrium Perspective: A Rectified Straight
Through Estimator for Binary Neural Networks Training", ICCV 2023; official code DravenALG/ReSTE):
    forward sign(x);   backward the derivative of the power function f(x) = sign(x) |x|^(1/o):
        f'(x) = (1/o) |x|^((1 - o)/o)           for 0.1 < |x| <= t
        f'(x) = 0.1^(1/o) / 0.1                 for |x| <= 0.1   (the small-interval rule)
        f'(x) = 0                               for |x| > t
    o is annealed from 1 upward over training (o = 1 is the STE clipped at t); a larger o makes
    f closer to sign (smaller estimating error) but its derivative sharper (less stable gradients).

Checked against the official code (DravenALG/ReSTE: model/binary_module/binarized_modules.py at
commit 42904d1, main.py at 42904d1 and 67036c9 (same schedule), utils/arguments.py at 1fde159):
  - forward is torch.sign (binarized_modules.py line 73), so sign(0) = 0 there as here;
  - t = 1.5 for weights and for activations (lines 17, 19), o starts at 1 (lines 18, 20);
  - interval = 0.1 (line 80); the power branch covers interval < |x| <= t, both ends as written
    (lines 83-86); the small interval |x| <= 0.1, both ends included, takes the secant slope
    approximate_function(0.1, o) / 0.1 = 0.1^(1/o) / 0.1 for either sign (lines 87-88, 96-100);
    everything else, |x| > t, gets 0 (line 82, zeros_like); no gradient for t and o (line 93);
  - the schedule (main.py, ReSTE(epoch)): o = 1 + (1 - cos(pi/2 * epoch/epochs)) * (o_end - 1),
    o_end = 3 by default (utils/arguments.py --o_end), the same o for weights and activations,
    set once per epoch, epochs counted from 0, so o = 1 at the first epoch and just under o_end at
    the last. `reste_o_schedule` is that formula.
Deliberate differences: the official STE (class Binary, lines 51-65) cannot run its backward
(`input = ctx.saved_tensors` is a tuple, and it returns three gradients for one input); `ste` here
is the estimator it intends (ones, zero where |x| > 1). `reste` raises UsageError for o < 1 and for
t < 0.1 (below the small interval the official masks overlap oddly), and evaluates the power branch
in one masked expression rather than by in-place indexing; the values are the same.
"""

from __future__ import annotations

import math

import torch

from stablelab.errors import UsageError

RESTE_INTERVAL = 0.1   # official binarized_modules.py line 80: the small-interval half-width
RESTE_T = 1.5          # official lines 17, 19: the clipping threshold for weights and activations
RESTE_O_END = 3.0      # official utils/arguments.py --o_end default


class _SignSTE(torch.autograd.Function):
    """sign(x) forward; identity gradient where |x| <= 1, zero elsewhere (BinaryNet's STE)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        # Courbariaux et al. 2016: g_x = g_q * 1_{|x| <= 1}
        return grad_output * (x.abs() <= 1).to(grad_output.dtype)


def ste(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with the straight-through estimator: gradient 1 for |x| <= 1, 0 for |x| > 1."""
    return _SignSTE.apply(x)


def reste_slope(x: torch.Tensor, t: float = RESTE_T, o: float = 1.0) -> torch.Tensor:
    """ReSTE's backward factor d sign(x)/dx ~ f'(x) for f(x) = sign(x)|x|^(1/o), as the official
    code computes it (clipped at t, constant slope on |x| <= 0.1). Same shape and dtype as x."""
    t, o = _check_reste(t, o)
    a = x.abs()
    # Wu et al. 2023, eq. of the ReSTE backward: f'(x) = (1/o) |x|^((1-o)/o); the clamp only
    # keeps pow away from 0 inside the branch that is replaced below anyway
    power = (1.0 / o) * a.clamp_min(RESTE_INTERVAL).pow((1.0 - o) / o)
    # official approximate_function(0.1, o) / 0.1: the secant slope of f over [0, 0.1]
    small = RESTE_INTERVAL ** (1.0 / o) / RESTE_INTERVAL
    slope = torch.where(a <= t, power, torch.zeros_like(power))
    return torch.where(a <= RESTE_INTERVAL, torch.full_like(power, small), slope)


class _SignReSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, t, o):
        ctx.save_for_backward(x)
        ctx.t, ctx.o = t, o
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * reste_slope(x, ctx.t, ctx.o).to(grad_output.dtype), None, None


def reste(x: torch.Tensor, t: float = RESTE_T, o: float = 1.0) -> torch.Tensor:
    """sign(x) with the ReSTE backward (Wu et al. 2023, official code DravenALG/ReSTE).

    Args:
        x: the latent real values (weights or activations).
        t: clipping threshold; the gradient is 0 for |x| > t (official default 1.5).
        o: power of the estimator, o >= 1; o = 1 is the STE clipped at t. Anneal it with
           `reste_o_schedule`.
    Returns:
        sign(x) (0 where x == 0, as torch.sign and the official code).
    """
    t, o = _check_reste(t, o)
    return _SignReSTE.apply(x, t, o)


def reste_o_schedule(epoch: int, epochs: int, o_end: float = RESTE_O_END) -> float:
    """o for this epoch (0-based) of `epochs`: 1 + (1 - cos(pi/2 * epoch/epochs)) (o_end - 1).

    The official main.py ReSTE(epoch) schedule; o rises from 1 at epoch 0 towards o_end."""
    if epochs < 1:
        raise UsageError(f"epochs must be at least 1, got {epochs}")
    if o_end < 1:
        raise UsageError(f"o_end must be >= 1, got {o_end}")
    # official main.py: beta = 1 - cos(ratio * pi * 0.5); o = 1 + beta * (o_end - 1)
    beta = 1.0 - math.cos(epoch / epochs * math.pi * 0.5)
    return 1.0 + beta * (o_end - 1.0)


def _check_reste(t, o) -> tuple[float, float]:
    t, o = float(t), float(o)
    if not o >= 1:
        raise UsageError(f"ReSTE needs o >= 1 (o = 1 is the clipped STE), got o = {o}")
    if not t >= RESTE_INTERVAL:
        raise UsageError(f"ReSTE needs t >= {RESTE_INTERVAL} (the small interval), got t = {t}")
    return t, o
