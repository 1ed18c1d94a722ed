"""Curves of a quantity against model size, fitted on small widths and read at a larger one (pure).

Final loss at one LR (x = log10 parameters, y = loss):
- `power_law`: log L linear in x (L = a N^b), the scaling-law default; 2+ sizes.
- `log_quadratic`: log L quadratic in x: can saturate or turn (a larger model worse at a fixed step
  count, because it has not converged); 3+ sizes.
- `saturating`: L = E + A N^-alpha (Kaplan et al. 2020; Hoffmann et al. 2022 with data fixed), E and A
  by least squares for each alpha on a grid; 3+ sizes.
- `constant`: the largest width's loss ("no trend"); 1+ size.
- `lr_shift` (one fit for all LRs of a group): log L = F(log10 lr + a log10 N) + b log10 N, F a cubic.
  Under standard parametrisation with Adam the loss-vs-LR curve keeps its shape as the model
  grows, moves to smaller LRs (the optimum LR falls with width) and down (Wortsman et al. 2023,
  figure 1; Everett et al. 2024 on LR transfer across width); a is that shift. At a fixed LR the
  loss can therefore improve and then get worse with size, which no per-LR power law can say.
The study chooses among those that its backtest can fit by their backtest error, not by taste
(`analysis.prediction`).

Attention logit at the prediction step: Wortsman et al. 2023 section 3.3 fit log10(logit) against
log10(size) with a quadratic; with few sizes a quadratic interpolates exactly and extrapolates
wildly, so a line below 5 sizes (`logit_degree`); `lr_shift` is the alternative the backtest weighs."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np


def extrapolate(x: Sequence[float], y: Sequence[float], x_target: float, degree: int = 1) -> float:
    """Polynomial fit of y on x evaluated at x_target; one point: that point (a constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0:
        return float("nan")
    if len(x) == 1:
        return float(y[0])
    return float(np.polyval(np.polyfit(x, y, min(degree, len(x) - 1)), x_target))


def power_law(x, losses, x_target) -> float:
    return math.exp(extrapolate(x, np.log(losses), x_target, 1))


def log_quadratic(x, losses, x_target) -> float:
    return math.exp(extrapolate(x, np.log(losses), x_target, 2))


_ALPHAS = np.linspace(0.02, 2.0, 100)


def saturating(x, losses, x_target) -> float:
    """L = E + A N^-alpha (alpha on a grid, E and A least squares; E >= 0)."""
    x, y = np.asarray(x, float), np.asarray(losses, float)
    best = (math.inf, float(y[-1]))
    for alpha in _ALPHAS:
        basis = 10 ** (-alpha * x)
        design = np.stack([np.ones_like(basis), basis], axis=1)
        (e, a), *_ = np.linalg.lstsq(design, y, rcond=None)
        if e < 0:
            continue
        sse = float(np.sum((design @ np.array([e, a]) - y) ** 2))
        if sse < best[0] - 1e-15:
            best = (sse, float(e + a * 10 ** (-alpha * x_target)))
    return best[1]


def constant(x, losses, x_target) -> float:
    return float(losses[int(np.argmax(x))])


SHIFT_DEGREE = 3
_SHIFTS = np.linspace(0.0, 2.0, 81)


def lr_shift(log_sizes: Sequence[float], log_lrs: Sequence[float], log_losses: Sequence[float],
             degree: int = SHIFT_DEGREE):
    """Fit log L = F(log10 lr + a x) + b x (x: log10 size, centred; F a polynomial of `degree`):
    a by a grid then Brent-free refinement on the grid's neighbourhood, F and b by least squares.
    Returns (predict(x, log10 lr) -> loss, a), or None when the points cannot determine the fit."""
    x = np.asarray(log_sizes, float)
    u0 = np.asarray(log_lrs, float)
    y = np.asarray(log_losses, float)
    degree = min(degree, len(y) - 4)
    if degree < 1 or len(set(x.tolist())) < 2:
        return None
    centre = float(x.mean())

    def design(a, xs, us):
        u = us + a * (xs - centre)
        return np.stack([u ** k for k in range(degree + 1)] + [xs - centre], axis=1)

    def sse(a):
        d = design(a, x, u0)
        coef, *_ = np.linalg.lstsq(d, y, rcond=None)
        return float(np.sum((d @ coef - y) ** 2)), coef

    grid = [(sse(a)[0], a) for a in _SHIFTS]
    a = min(grid)[1]
    for step in (0.0125, 0.003, 0.0008):  # local refinement around the grid's best
        a = min(((sse(a + k * step)[0], a + k * step) for k in range(-2, 3)))[1]
    coef = sse(a)[1]

    def predict(xs: float, log_lr: float) -> float:
        return float(np.exp(design(a, np.array([xs]), np.array([log_lr])) @ coef)[0])

    return predict, float(a)


# name -> (curve, the fewest sizes it needs)
LOSS_MODELS: dict[str, tuple[Callable, int]] = {
    "power_law": (power_law, 2),
    "log_quadratic": (log_quadratic, 3),
    "saturating": (saturating, 3),
    "constant": (constant, 1),
    "lr_shift": (None, 2),  # a group-level fit: fit_group_losses
}
GROUP_MODELS = ("lr_shift",)
LOSS_MODEL_TEXT = {
    "power_law": "log(loss) linear in log10(params) (L = a N^b)",
    "log_quadratic": "log(loss) quadratic in log10(params): can saturate or turn",
    "saturating": "L = E + A N^-alpha (offset power law)",
    "constant": "the largest width's loss (no trend)",
    "lr_shift": "one fit per group over every LR and width: log L = F(log10 lr + a log10 N) + b log10 N, F cubic "
                "(the LR curve moves to smaller LRs and down as the model grows)",
}


def fit_loss(model: str, sizes: Sequence[float], losses: Sequence[float], n_target: float) -> float:
    """Loss at n_target under `model`; with fewer sizes than it needs, the richest model that fits."""
    curve, need = LOSS_MODELS[model]
    if len(sizes) < need:
        curve = power_law if len(sizes) >= 2 else constant
    value = curve(np.log10(np.asarray(sizes, float)), np.maximum(np.asarray(losses, float), 1e-12),
                  math.log10(n_target))
    return value if math.isfinite(value) and value > 0 else float("nan")


def combined_curves(model: str) -> list[str] | None:
    """The curves of a combination "mean:a,b,..." (None for a single curve); ValueError for an
    unknown one."""
    if not model.startswith("mean:"):
        return None
    names = [n for n in model[len("mean:"):].split(",") if n]
    unknown = [n for n in names if n not in LOSS_MODELS]
    if len(names) < 2 or unknown:
        raise ValueError(f"a combination names 2+ of {', '.join(LOSS_MODELS)}: got {model!r}")
    return names


def loss_model_text(model: str) -> str:
    names = combined_curves(model)
    if names is None:
        return LOSS_MODEL_TEXT[model]
    return "the geometric mean of the forecasts of " + ", ".join(names) + " (forecast combination)"


def fit_group_losses(model: str, sizes: Sequence[float], lrs: Sequence[float], losses, usable, n_target: float
                     ) -> list[float]:
    """Per-LR losses at n_target from a (size x LR) table; `usable` marks the cells to fit (not diverged).
    A group-level model that cannot be fitted falls back to the per-LR power law. "mean:a,b" is the
    geometric mean of the curves' forecasts (a forecast combination, Bates & Granger 1969)."""
    names = combined_curves(model)
    if names is not None:
        forecasts = np.array([fit_group_losses(n, sizes, lrs, losses, usable, n_target) for n in names], float)
        with np.errstate(invalid="ignore", divide="ignore"):
            logs = np.where(forecasts > 0, np.log(np.where(forecasts > 0, forecasts, 1.0)), np.nan)
        # a curve that cannot be fitted at an LR is left out there; none fitted: NaN
        return [float(np.exp(np.mean(col[np.isfinite(col)]))) if np.isfinite(col).any() else float("nan")
                for col in logs.T]
    losses = np.asarray(losses, float)
    if model in GROUP_MODELS:
        mask = np.asarray(usable, bool) & np.isfinite(losses) & (losses > 0)
        xs, us = np.meshgrid(np.log10(np.asarray(sizes, float)), np.log10(np.asarray(lrs, float)), indexing="ij")
        fit = lr_shift(xs[mask], us[mask], np.log(losses[mask])) if mask.sum() else None
        if fit is not None:
            predict, _ = fit
            return [predict(math.log10(n_target), math.log10(lr)) for lr in lrs]
        model = "power_law"
    return [fit_loss(model, sizes, losses[:, j], n_target) for j in range(len(lrs))]


LOGIT_MODELS = ("paper", "lr_shift")
LOGIT_MODEL_TEXT = {
    "paper": "paper 3.3: log10(layer-0 max attention logit at the prediction step) against log10(params) per LR, "
             "a line (a quadratic from 5 widths)",
    "lr_shift": "one fit per group: log z = G(log10 lr + a log10 N) + b log10 N, G cubic",
}


def fit_group_logits(model: str, sizes: Sequence[float], lrs: Sequence[float], logits, n_target: float
                     ) -> list[float]:
    """Per-LR attention logits at n_target from a (size x LR) table of logits (NaN where missing)."""
    z = np.asarray(logits, float)
    if model == "lr_shift":
        mask = np.isfinite(z) & (z > 0)
        xs, us = np.meshgrid(np.log10(np.asarray(sizes, float)), np.log10(np.asarray(lrs, float)), indexing="ij")
        fit = lr_shift(xs[mask], us[mask], np.log(z[mask])) if mask.sum() else None
        if fit is not None:
            predict, _ = fit
            return [predict(math.log10(n_target), math.log10(lr)) for lr in lrs]
    return [fit_logit(sizes, z[:, j].tolist(), n_target) for j in range(len(lrs))]


def logit_degree(n: int) -> int:
    """Quadratic (the paper's) only from 5 sizes: then the backtest, one size fewer, fits the same
    degree with a point to spare, and its errors calibrate the target's; otherwise a line."""
    return max(1, min(2, n - 3))


def fit_logit(sizes: Sequence[float], logits: Sequence[float | None], n_target: float) -> float:
    """Paper 3.3: log10(logit) against log10(size), degree min(2, n - 2), at least 1."""
    pts = [(s, z) for s, z in zip(sizes, logits) if z is not None and math.isfinite(z) and z > 0]
    if not pts:
        return float("nan")
    x = np.log10([p[0] for p in pts])
    return float(10 ** extrapolate(x, np.log10([p[1] for p in pts]), math.log10(n_target), logit_degree(len(pts))))
