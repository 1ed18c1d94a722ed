"""Decisions a user acts on, from a forecast's per-LR losses and its calibration (pure).

Draws of the per-LR final losses (log-normal around the calibrated point, sd = half-width / z,
correlated across LRs as the backtest's errors are) give the probability that each LR diverges,
the best LR with each LR's odds, the largest stable LR (a bound at the top of the grid) and the LR
sensitivity (Wortsman et al. 2023, section 2), each with its interval (the sensitivity's widened
for the bias of a minimum: `sensitivity_interval`); `group_points` turns one
group's forecast into the points of summary.json."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from stablelab.analysis.calibration import Calibration, binary_set, grid_set, log_interval, z_for
from stablelab.analysis.proxy import ATTN_LOGIT_DANGER, best_lr, largest_stable_lr, lr_sensitivity

DRAWS = 4000


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _draws(centre: np.ndarray, cal_loss: Calibration, rng: np.random.Generator, n: int, lrs) -> np.ndarray:
    """(n, n_lrs) draws of per-LR final losses, log-normal around the bias-corrected points (uncapped)."""
    sigma = np.array([cal_loss.half_width_at(lr) for lr in lrs]) / z_for(cal_loss.level)
    rho = cal_loss.correlation
    common = rng.standard_normal((n, 1))
    own = rng.standard_normal((n, len(centre)))
    with np.errstate(invalid="ignore"):  # a point that could not be fitted stays NaN
        return np.exp(np.log(centre) + sigma * (math.sqrt(rho) * common + math.sqrt(1 - rho) * own))


def decisions(raw: dict, cals: dict[str, Calibration], level: float, seed: int = 0) -> dict:
    """Probabilities and intervals of the decisions a user acts on, from draws of the losses."""
    rng = np.random.default_rng(seed)
    lrs = raw["lrs"]
    inits = np.array([p["init"] for p in raw["per_lr"]])
    floor = np.array([p["diverged_fraction"] for p in raw["per_lr"]])
    points = np.array([p["final_loss"] for p in raw["per_lr"]], float)
    corrected = points * np.exp([cals["final_loss"].bias_at(lr) for lr in lrs])
    draws = _draws(np.where(corrected > 0, corrected, np.nan), cals["final_loss"], rng, DRAWS, lrs)
    draws = np.where(np.isfinite(draws), draws, inits)
    # A run that diverged at the largest fitted width diverges at least as often at a larger one.
    diverged = (draws >= inits) | (rng.random(draws.shape) < floor)
    capped = np.where(diverged, inits, np.minimum(draws, inits))
    p_div = diverged.mean(axis=0)

    centre = np.minimum(corrected, inits)
    point_div = [bool(p >= 0.5) for p in p_div]
    centre = np.where(point_div, inits, centre)

    argmins = np.argmin(capped, axis=1)
    odds = np.bincount(argmins, minlength=len(lrs)) / len(argmins)
    best = best_lr(lrs, centre)
    stable_idx = np.where(~diverged, np.arange(len(lrs)), -1).max(axis=1)
    largest = largest_stable_lr(lrs, point_div)
    top = len(lrs) - 1
    alpha = 1 - level
    lo_i, hi_i = np.quantile(stable_idx, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    lo_lr = lrs[int(lo_i)] if lo_i >= 0 else None
    hi_lr = None if hi_i >= top else (lrs[int(hi_i)] if hi_i >= 0 else None)
    if largest is not None and largest == lrs[top]:
        hi_lr = None  # the top of the grid is stable: the largest stable LR is at least there
    if hi_lr is not None and lo_lr == hi_lr:  # one grid LR stands for the range up to the next one
        hi_lr = lrs[lrs.index(hi_lr) + 1]
    sens_draws = capped.mean(axis=1) - capped.min(axis=1)  # lr_sensitivity of each draw, vectorised
    sens = lr_sensitivity(centre, inits)
    s_lo, s_hi = np.quantile(sens_draws, [alpha / 2, 1 - alpha / 2])
    s_lo, s_hi = sensitivity_interval(sens, s_lo, s_hi)
    return {
        "diverged": point_div, "probability": p_div.tolist(),
        "best_lr": {"predicted": best, "interval": grid_set(lrs, odds.tolist(), level, best) if best is not None
                    else None, "odds": {f"{lr:g}": float(o) for lr, o in zip(lrs, odds)}},
        "largest_stable_lr": {"predicted": largest, "interval": [lo_lr, hi_lr],
                              "bound": "at least" if hi_lr is None and lo_lr is not None else None},
        "lr_sensitivity": {"predicted": sens, "interval": [s_lo, s_hi]},
    }


def sensitivity_interval(sens: float, q_lo: float, q_hi: float) -> tuple[float, float]:
    """The LR sensitivity's interval from the draws' quantiles (q_lo, q_hi) around the forecast's
    sensitivity `sens`: the union of the percentile interval [q_lo, q_hi] (right if the truth scatters
    around the forecast) and the basic-bootstrap interval [2 sens - q_hi, 2 sens - q_lo] (right if the
    forecast scatters around the truth: then its minimum over LRs is already too low and its
    sensitivity too high), never below 0 and always holding `sens`. A mean minus a minimum is biased
    under either reading, in opposite directions, and the backtests do not say which holds."""
    # basic bootstrap interval: Davison & Hinkley 1997, eq. 5.6
    lo = max(0.0, min(q_lo, 2 * sens - q_hi, sens))
    return float(lo), float(max(q_hi, 2 * sens - q_lo, sens))


def _paper_probability(logit: float, cal: Calibration, lr: float) -> float | None:
    """P(logit > 1e4) under the calibrated log-normal around the predicted logit (paper 3.3)."""
    if not _finite(logit) or logit <= 0:
        return None
    centre = math.log(logit) + cal.bias_at(lr)
    sigma = max(cal.half_width_at(lr) / z_for(cal.level), 1e-12)
    return 1 - NormalDist(centre, sigma).cdf(math.log(ATTN_LOGIT_DANGER))


def group_points(raw: dict, cals: dict[str, Calibration], level: float, fields: dict,
                 seed: int = 0) -> list[dict]:
    """Every predicted quantity of one group, as points {quantity, ..., lr, predicted, interval, level}."""
    dec = decisions(raw, cals, level, seed)
    points = []
    for i, row in enumerate(raw["per_lr"]):
        lr = row["lr"]
        loss, loss_iv = log_interval(row["final_loss"], cals["final_loss"], lr)
        if dec["diverged"][i]:
            loss, loss_iv = row["init"], [row["init"] * math.exp(-cals["final_loss"].half_width_at(lr)), row["init"]]
        elif loss_iv is not None:
            loss = min(loss, row["init"])
            loss_iv = [min(loss_iv[0], loss), min(loss_iv[1], row["init"])]
        logit, logit_iv = log_interval(row["attn_logit"], cals["attn_logit"], lr)
        base = {**fields, "lr": lr, "level": level}
        points.append({"quantity": "final_loss", **base, "predicted": loss, "interval": loss_iv,
                       "calibrated": cals["final_loss"].calibrated})
        points.append({"quantity": "attn_logit", **base, "predicted": logit, "interval": logit_iv,
                       "calibrated": cals["attn_logit"].calibrated})
        p = dec["probability"][i]
        points.append({"quantity": "diverged", **base, "predicted": int(p >= 0.5), "interval": binary_set(p, level),
                       "probability": p, "probability_paper": _paper_probability(row["attn_logit"],
                                                                                cals["attn_logit"], lr),
                       "calibrated": cals["final_loss"].calibrated})
    base = {**fields, "lr": None, "level": level, "calibrated": cals["final_loss"].calibrated}
    points.append({"quantity": "best_lr", **base, **dec["best_lr"]})
    points.append({"quantity": "largest_stable_lr", **base, **dec["largest_stable_lr"]})
    points.append({"quantity": "lr_sensitivity", **base, **dec["lr_sensitivity"]})
    return points
