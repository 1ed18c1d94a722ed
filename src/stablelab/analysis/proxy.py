"""Pure analysis of a proxy study: LR sensitivity, best and largest stable LR, and the attention-
logit prediction of Wortsman et al. 2023 (arXiv 2309.14322), sections 3.1 and 3.3."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from stablelab.analysis.extrapolation import logit_degree

ATTN_LOGIT_DANGER = 1e4  # paper 3.3: runs whose layer-0 attention logit passed ~1e4 diverged


def _clean(final_losses: Sequence[float], init_losses: Sequence[float] | float) -> np.ndarray:
    final = np.asarray(final_losses, dtype=float)
    init = np.broadcast_to(np.asarray(init_losses, dtype=float), final.shape)
    # A diverged run (NaN / inf) counts as the loss at initialisation.
    return np.where(np.isfinite(final), np.minimum(final, init), init)


def lr_sensitivity(final_losses: Sequence[float], init_losses: Sequence[float] | float) -> float:
    """Wortsman et al. 2023, eq. in section 2: E_lr[ min(L(lr), L_init) - min_lr L(lr) ] over the grid.

    `final_losses[i]` is the final loss at the i-th LR of the grid; `init_losses` the loss at
    initialisation (one value or one per LR). Non-finite losses count as L_init."""
    capped = _clean(final_losses, init_losses)
    if capped.size == 0:
        return float("nan")
    return float(np.mean(capped - capped.min()))


def best_lr(lrs: Sequence[float], final_losses: Sequence[float]) -> float | None:
    losses = np.asarray(final_losses, dtype=float)
    finite = np.isfinite(losses)
    if not finite.any():
        return None
    return float(np.asarray(lrs, dtype=float)[finite][np.argmin(losses[finite])])


def largest_stable_lr(lrs: Sequence[float], diverged: Sequence[bool]) -> float | None:
    """The largest LR of the grid whose run did not diverge (None if all diverged)."""
    stable = [lr for lr, d in zip(lrs, diverged) if not d]
    return max(stable) if stable else None


def first_divergent_lr(lrs: Sequence[float], diverged: Sequence[bool]) -> float | None:
    """The smallest LR from which every larger LR of the grid diverges (None if the largest is fine)."""
    pairs = sorted(zip(lrs, diverged))
    first = None
    for lr, d in reversed(pairs):
        if not d:
            break
        first = lr
    return first


@dataclass(frozen=True)
class LogitFit:
    """Fit of log10(max attention logit) against log10(parameter count) at one LR."""

    lr: float
    degree: int
    coefficients: tuple[float, ...]   # numpy.polyfit order, highest power first
    sizes: tuple[float, ...]
    logits: tuple[float, ...]

    def predict(self, n_params: float) -> float:
        return float(10 ** np.polyval(self.coefficients, math.log10(n_params)))


def fit_attention_logit_growth(sizes: Sequence[float], logits: Sequence[float], lr: float) -> LogitFit | None:
    """Paper 3.3 fits the layer-0 max attention logit at a fixed early step against model size,
    quadratic in log-size. With few sizes a quadratic interpolates exactly and extrapolates wildly,
    so a least-squares line below 5 sizes (`analysis.extrapolation.logit_degree`, which the forecast's
    backtest also uses)."""
    points = [(s, z) for s, z in zip(sizes, logits) if z is not None and np.isfinite(z) and z > 0]
    if len(points) < 2:
        return None
    x = np.log10([p[0] for p in points])
    y = np.log10([p[1] for p in points])
    degree = logit_degree(len(points))
    coefficients = np.polyfit(x, y, degree)
    return LogitFit(lr, degree, tuple(float(c) for c in coefficients),
                    tuple(float(p[0]) for p in points), tuple(float(p[1]) for p in points))
