"""Prediction intervals calibrated on a study's own backtest (pure functions).

A study with three or more widths predicts its own largest width from the smaller ones (the
backtest, `analysis.prediction`). The log ratios observed / predicted of that backtest are the
calibration set: their median per LR is the extrapolation's bias, and the half-width of the
interval is a split-conformal quantile of scores (Vovk et al. 2005; Angelopoulos & Bates 2021, "A
gentle introduction to conformal prediction", section 1: the ceil((n+1)(1-alpha))-th smallest
score gives coverage >= 1 - alpha for an exchangeable new point). The score is the error a bias
learned one width back leaves: with 4+ widths, each backtest residual against the earlier fold's
per-LR bias from the other groups (`transfer_scores`; the target's point keeps exactly that kind
of error, its bias being the backtest's); with 3 widths, against the backtest's own bias from the
other groups (jackknife+, `jackknife_scores`). The variants of a study share seed and data, so
their residuals at one LR can be near copies: the jackknife then sees no spread, while the per-LR
error still changes from width to width (docs/proxy.md, the fresh prose corpus). Residuals are
scaled by the extrapolation distance (log of target size over the largest fitted size) relative to
the backtest's, so a forecast two doublings ahead gets twice the backtest's spread and bias. With
2+ seeds, each LR's final-loss half-width follows the LR's own seed noise (`noise_scales`:
normalised scores, Papadopoulos et al. 2008; Lei et al. 2018)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist
from typing import Sequence

import numpy as np

# Used when a quantity cannot be calibrated (fewer than 3 widths, or too few backtest points for the
# level): wide ranges, in log space, larger than every backtest spread measured on the default grid.
UNCALIBRATED_HALF_WIDTH = {"final_loss": math.log(1.25), "attn_logit": math.log(10.0)}


def z_for(level: float) -> float:
    """Two-sided normal quantile: z_for(0.9) = 1.645."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def conformal_quantile(scores: Sequence[float], level: float) -> float | None:
    """The ceil((n + 1) level)-th smallest score (split conformal); None when n is too small for the
    level (that many points cannot promise it)."""
    s = sorted(float(v) for v in scores if v is not None and math.isfinite(v))
    k = math.ceil((len(s) + 1) * level)
    if not s or k > len(s):
        return None
    return s[k - 1]


@dataclass(frozen=True)
class Calibration:
    """How one quantity class's intervals are built, in log space, at the backtest's distance:
    point x exp(bias at its LR), interval point x exp(+-half_width); `scaled` moves both to the
    target's extrapolation distance."""

    quantity: str
    level: float
    bias: float            # median log(observed / predicted) of the backtest, all LRs
    half_width: float      # conformal quantile of the jackknife scores, or the uncalibrated default
    n: int                 # backtest residuals used
    calibrated: bool
    correlation: float = 0.0   # share of the residual variance common to all LRs of a group
    seed_sd: float = 0.0       # seed-to-seed sd of log values at the study's widths (0: one seed)
    bias_by_lr: tuple = ()     # ((lr, median residual at that LR over groups), ...)
    scores: str = "jackknife"  # what the half-width is the quantile of: "transfer" (change from the earlier
    #                            fold, 4+ widths) or "jackknife" (distance from the other groups' bias)
    width_by_lr: tuple = ()    # ((lr, sigma(lr) / sigma(median LR)), ...): per-LR scale of the half-width from the
    #                            LR's seed noise (2+ seeds, `noise_scales`); empty: one half-width for every LR
    floor: float = 0.0         # no half-width below this (the level's quantile of one run's seed noise;
    #                            0 with per-LR widths, whose sigma(lr) holds the LR's own noise)
    drift: float = 0.0         # median change of the per-LR bias from the earlier fold to the backtest
    #                            (`transfer_drift`; 0 unless asked for): added to the target's bias by `scaled`

    def bias_at(self, lr) -> float:
        return _at(self.bias_by_lr, lr, self.bias)

    def half_width_at(self, lr) -> float:
        """The half-width at one LR: the reference half-width times the LR's noise scale, floored."""
        return max(self.half_width * _at(self.width_by_lr, lr, 1.0), self.floor)

    def to_json(self) -> dict:
        out = asdict(self)
        out["bias_by_lr"] = {f"{lr:g}": b for lr, b in self.bias_by_lr}
        out["width_by_lr"] = {f"{lr:g}": f for lr, f in self.width_by_lr}
        return out


def _at(pairs: tuple, lr, default: float) -> float:
    for value, v in pairs:
        if lr is not None and math.isclose(value, lr):
            return v
    return default


def correlation_across_lrs(residuals_by_group: dict) -> float:
    """Share rho of the residual variance that is common to all LRs of a group, from
    E[mean_g^2] = rho s^2 + (1 - rho) s^2 / n (residuals centred), clipped to [0, 0.95]."""
    groups = [np.asarray(v, float) for v in residuals_by_group.values() if len(v) > 1]
    if len(groups) < 2:
        return 0.5
    everything = np.concatenate(groups)
    centre = float(np.median(everything))
    s2 = float(np.mean((everything - centre) ** 2))
    if s2 <= 0:
        return 0.0
    n = float(np.mean([len(g) for g in groups]))
    m2 = float(np.mean([(np.mean(g) - centre) ** 2 for g in groups]))
    return float(np.clip((m2 - s2 / n) / (s2 * (1 - 1 / n)), 0.0, 0.95))


def _bias_by_lr(by_group: dict, skip=None) -> dict:
    """lr -> median residual over the groups (other than `skip`) that have it, from 2 groups up."""
    values: dict = {}
    for g, rs in by_group.items():
        if g != skip:
            for lr, r in rs.items():
                values.setdefault(lr, []).append(r)
    return {lr: float(np.median(v)) for lr, v in values.items() if len(v) >= 2}


def jackknife_scores(by_group: dict) -> list[float]:
    """|residual - the bias at its LR computed without its own group| for every residual
    ({group: {lr: residual}}); with one group, the bias is the median of its other LRs."""
    return [s for _, s in _jackknife_pairs(by_group)]


def _jackknife_pairs(by_group: dict) -> list[tuple[float, float]]:
    everything = [r for rs in by_group.values() for r in rs.values()]
    overall = float(np.median(everything)) if everything else 0.0
    scores = []
    for g, rs in by_group.items():
        others = _bias_by_lr(by_group, skip=g) if len(by_group) > 2 else {}
        rest = [r for h, o in by_group.items() if h != g for r in o.values()]
        for lr, r in rs.items():
            if lr in others:
                centre = others[lr]
            elif len(by_group) > 1 and rest:
                centre = float(np.median(rest))
            else:  # one group: the median of its other LRs
                own = [v for k, v in rs.items() if k != lr]
                centre = float(np.median(own)) if own else overall
            scores.append((lr, abs(r - centre)))
    return scores


def transfer_scores(by_group: dict, previous: dict) -> list[float]:
    """|residual - the earlier fold's per-LR bias from the other groups| for every residual: the error
    a per-LR bias learned one width back leaves on the next width's points, which is what the
    target's point keeps (its bias is the backtest's, one width back). Empty without an earlier fold
    of 3+ groups."""
    return [s for _, s in _transfer_pairs(by_group, previous)]


def _transfer_pairs(by_group: dict, previous: dict, signed: bool = False) -> list[tuple[float, float]]:
    if len(previous) < 3:
        return []
    scores = []
    for g, rs in by_group.items():
        bias = _bias_by_lr(previous, skip=g)
        scores += [(lr, r - bias[lr] if signed else abs(r - bias[lr])) for lr, r in rs.items() if lr in bias]
    return scores


def transfer_drift(by_group: dict, previous: dict) -> float:
    """D: the median over every (group, LR) of r_B - (the earlier fold's bias at the LR from the other
    groups), i.e. how far the per-LR bias moved from one extrapolation to the next, pooled over LRs;
    0 without an earlier fold of 3+ groups."""
    signed = [d for _, d in _transfer_pairs(by_group, previous, signed=True)]
    return float(np.median(signed)) if signed else 0.0


def noise_scales(pairs: Sequence[tuple[float, float]], noise_by_lr: dict) -> dict:
    """Per LR, the relative scale of its scores under the variance model score^2 ~ tau^2 + noise(lr)
    (noise(lr): the seed-noise variance a score at that LR carries, from the LR's seed-to-seed sd;
    tau^2: the extrapolation error every LR shares, by moments: mean(score^2 - noise), at least 0).
    Scores divided by sigma(lr) = sqrt(tau^2 + noise(lr)) are the normalised nonconformity scores of
    Papadopoulos et al. 2008 / Lei et al. 2018 (section 5.2, locally weighted conformal): their quantile
    times sigma(lr) gives each LR an interval as wide as its own noise. Returned relative to the
    median LR's sigma ({lr: sigma(lr) / median sigma}); {} when an LR of the scores has no noise."""
    if not pairs or any(lr not in noise_by_lr for lr, _ in pairs):
        return {}
    tau2 = max(0.0, float(np.mean([s * s - noise_by_lr[lr] for lr, s in pairs])))
    sigma = {lr: math.sqrt(tau2 + noise_by_lr[lr]) for lr in sorted({lr for lr, _ in pairs})}
    middle = float(np.median(list(sigma.values())))
    if middle <= 0:
        return {}
    return {lr: v / middle for lr, v in sigma.items()}


def calibrate(quantity: str, residuals_by_group: dict, level: float, seed_sd: float = 0.0,
              floor: float = 0.0, previous: dict | None = None, noise_by_lr: dict | None = None,
              drift: bool = False) -> Calibration:
    """Bias and half-width for one quantity class from backtest log residuals
    ({group: {lr: log(observed / predicted)}}).

    The bias is per LR: the median over groups at that LR (the extrapolation errs the same way for
    every variant at one LR: at low LR a larger model is further from convergence, at high LR less
    hurt). With `previous` (the earlier fold's residuals, 4+ widths, 3+ groups) each residual's score
    is its distance from the earlier fold's bias at its LR without its own group (`transfer_scores`);
    otherwise from the backtest's own bias computed WITHOUT its own group (jackknife+, Barber et al.
    2021), so the conformal quantile is not flattered by fitting the bias on the point it scores.
    With one group, the bias is the median over the other LRs. With `noise_by_lr` (each LR's seed-noise
    variance in a score, 2+ seeds) the scores are normalised by `noise_scales` and the half-width
    varies by LR (`Calibration.half_width_at`). With `drift` (and transfer scores) the bias is expected
    to keep moving as it did from the earlier fold to the backtest: D = `transfer_drift` is added to the
    target's bias (`scaled`) and the scores are |r_B - bias_A - D|. Falls back to the wide default
    (calibrated=False) when there are too few residuals for the level."""
    by_group = {g: {lr: float(r) for lr, r in rs.items() if r is not None and math.isfinite(r)}
                for g, rs in residuals_by_group.items()}
    everything = [r for rs in by_group.values() for r in rs.values()]
    rho = correlation_across_lrs({g: list(rs.values()) for g, rs in by_group.items()})
    pairs = _transfer_pairs(by_group, previous) if previous else []
    method = "transfer" if pairs else "jackknife"
    moved = transfer_drift(by_group, previous) if pairs and drift else 0.0
    if moved:
        pairs = [(lr, abs(d - moved)) for lr, d in _transfer_pairs(by_group, previous, signed=True)]
    if not pairs:
        pairs = _jackknife_pairs(by_group)
    scales = noise_scales(pairs, noise_by_lr or {})
    q = conformal_quantile([s / scales.get(lr, 1.0) for lr, s in pairs], level) if everything else None
    if q is None:
        return Calibration(quantity, level, 0.0, max(UNCALIBRATED_HALF_WIDTH[quantity], floor), len(everything),
                           False, rho, seed_sd, scores=method, floor=floor)
    by_lr = _bias_by_lr(by_group) if len(by_group) > 2 else {}
    # per-LR widths carry each LR's seed noise in sigma(lr) (noise_scales), so they need no common floor
    return Calibration(quantity, level, float(np.median(everything)), q if scales else max(q, floor),
                       len(everything), True, rho, seed_sd, tuple(sorted(by_lr.items())), scores=method,
                       width_by_lr=tuple(sorted(scales.items())), floor=0.0 if scales else floor, drift=moved)


def line_leverage(xs: Sequence[float], x_target: float) -> float:
    """Leverage of a least-squares line at x_target: 1/n + (x_t - mean)^2 / sum (x - mean)^2; the
    prediction error's variance is sigma^2 (1 + leverage) for noise sigma per point."""
    x = np.asarray(xs, float)
    sxx = float(np.sum((x - x.mean()) ** 2))
    return 1 / len(x) + ((x_target - x.mean()) ** 2 / sxx if sxx > 0 else 0.0)


def last_widths(widths: Sequence, window: int | None) -> list:
    """The `window` largest of `widths`, sorted ascending (every one with None): what one fit uses."""
    return list(widths[-window:]) if window else list(widths)


def score_leverage(xs: Sequence[float], n_groups: int, window: int | None = None) -> float:
    """lambda: a calibration score's noise variance in units of one cell mean's, for per-LR lines in
    log size (xs: the study's widths; the backtest predicts the last from the rest). With 4+ widths the
    score is r_B - (median over the other groups of r_A): (1 + h_B) + kappa (1 + h_A); with 3,
    r_B - median of the others' r_B: (1 + h_B)(1 + kappa); kappa = pi / 2 / (groups - 1), the
    variance of a median of n - 1 over one value's (large-sample, normal)."""
    kappa = math.pi / 2 / max(n_groups - 1, 1)
    h_b = line_leverage(last_widths(xs[:-1], window), xs[-1])
    if len(xs) >= 4:
        return (1 + h_b) + kappa * (1 + line_leverage(last_widths(xs[:-2], window), xs[-2]))
    return (1 + h_b) * (1 + kappa)


def scaled(cal: Calibration, distance: float, leverage: float = 1.0) -> Calibration:
    """The calibration at the target: bias (plus the drift, if any) and half-width grow with the
    extrapolation distance (relative to the backtest's); for a per-LR line, the half-width also
    follows its leverage."""
    # per-LR widths: sigma(lr) holds the LR's own seed noise, so no common floor
    floor = 0.0 if cal.width_by_lr else z_for(cal.level) * cal.seed_sd
    d = cal.drift
    return replace(cal, bias=(cal.bias + d) * distance,
                   bias_by_lr=tuple((lr, (b + d) * distance) for lr, b in cal.bias_by_lr),
                   half_width=max(cal.half_width * distance * leverage, floor), floor=floor)


def log_interval(point: float, cal: Calibration, lr=None) -> tuple[float, list[float] | None]:
    """(bias-corrected point, interval) for a positive quantity at one LR."""
    if point is None or not math.isfinite(point) or point <= 0:
        return point, None
    centre = point * math.exp(cal.bias_at(lr))
    h = cal.half_width_at(lr)
    return centre, [centre * math.exp(-h), centre * math.exp(h)]


def binary_set(probability: float, level: float) -> list[int]:
    """The level prediction set of a yes/no outcome: [0, 0] (no), [1, 1] (yes) or [0, 1] (either)."""
    alpha = 1 - level
    lo = 0 if probability < 1 - alpha / 2 else 1
    hi = 1 if probability > alpha / 2 else 0
    return [lo, hi]


def grid_set(values: Sequence[float], probabilities: Sequence[float], level: float, point: float) -> list[float]:
    """The narrowest contiguous range of grid values around `point` holding `level` of the probability;
    never a single value (a grid point stands for the range up to its neighbours)."""
    values = list(values)
    p = list(probabilities)
    i = j = values.index(point)
    mass = p[i]
    while mass < level - 1e-12 and (i > 0 or j < len(values) - 1):
        left = p[i - 1] if i > 0 else -1.0
        right = p[j + 1] if j < len(values) - 1 else -1.0
        if left >= right:
            i -= 1
            mass += p[i]
        else:
            j += 1
            mass += p[j]
    if i == j:  # widen to the likelier neighbour
        left = p[i - 1] if i > 0 else -1.0
        right = p[j + 1] if j < len(values) - 1 else -1.0
        if left < 0 and right < 0:
            return [values[i], values[j]]
        if left >= right:
            i -= 1
        else:
            j += 1
    return [values[i], values[j]]


def is_inside(observed, interval) -> bool:
    """Observed within the interval; an interval with a None end is a bound ("at least lo")."""
    if observed is None or interval is None or (isinstance(observed, float) and not math.isfinite(observed)):
        return False
    lo, hi = interval
    slack = 1e-9 * max(abs(lo or 0.0), abs(hi or 0.0))  # rounding, not a margin
    return (lo is None or observed >= lo - slack) and (hi is None or observed <= hi + slack)


def coverage(points: Sequence[dict]) -> dict:
    """quantity class -> {"inside", "total", "fraction"}, plus "all"."""
    out: dict[str, dict] = {}
    for p in points:
        for key in (p["quantity"], "all"):
            c = out.setdefault(key, {"inside": 0, "total": 0})
            c["inside"] += bool(p["inside"])
            c["total"] += 1
    for c in out.values():
        c["fraction"] = c["inside"] / c["total"] if c["total"] else None
    return out
