"""Forecasts for a larger width from a proxy study's small widths, with calibrated intervals (pure).

The pipeline, the same for the target width, the backtest and the check (`--validate-width`):
1. **Fit** per group (variant x optimizer x depth x axis value): the final loss with a curve of
   `analysis.extrapolation.LOSS_MODELS` (per LR, or `lr_shift` over all LRs at once), capped at
   the loss at initialisation (a diverged run counts as the loss at init, the paper's
   LR-sensitivity convention); the layer-0 attention logit at the prediction step with the paper's
   log-log fit (section 3.3) or `lr_shift`.
2. **Backtest** (3+ widths): the same fit predicts the study's own largest width from the smaller
   ones; no extra training. Its log ratios observed / predicted choose the curves (smallest median
   error) and calibrate the intervals (`analysis.calibration`): bias = their median per LR,
   half-width = the split-conformal quantile of the jackknife+ scores at the stated level, both
   scaled by the extrapolation distance. With fewer widths nothing can be calibrated: the intervals are
   wide defaults and say so (`calibrated: false`).
3. **Decisions** (`analysis.decisions`): probabilities and intervals for divergence, the best LR,
   the largest stable LR and the LR sensitivity, from draws of the calibrated per-LR losses.
The backtest's own intervals are calibrated leaving its group out (leave-one-group-out), so its
coverage is an honest estimate of the target's. `window=k` fits every fold (earlier fold, backtest,
target) on the k largest widths below its target instead of all of them (judged, not the default:
docs/proxy.md, "What limits the forecast")."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np

from stablelab.analysis.accuracy import accuracy, group_fields
from stablelab.analysis.calibration import (Calibration, calibrate, coverage, is_inside, last_widths, line_leverage,
                                            scaled, score_leverage, z_for)
from stablelab.analysis.cells import _cells, _finite, cell_values, noise_by_lr, seed_spread, seed_spread_by_lr
from stablelab.analysis.decisions import group_points
from stablelab.analysis.extrapolation import (LOGIT_MODEL_TEXT, LOGIT_MODELS, LOSS_MODELS, extrapolate,
                                              fit_group_logits, fit_group_losses, logit_degree, loss_model_text)
from stablelab.analysis.noise_floor import seed_noise_floor
from stablelab.analysis.proxy import best_lr, largest_stable_lr, lr_sensitivity

__all__ = ["extrapolate", "forecast", "validate", "METHODS", "DEFAULT_LEVEL"]

DEFAULT_LEVEL = 0.9
WINDOW = None  # widths per fit: None, every width below the one predicted; k, the k largest of them
CONTINUOUS = ("final_loss", "attn_logit")
METHODS = {
    "final_loss": "the loss curve the backtest chose (see models), capped at the loss at init "
                  "(diverged runs count as the loss at init)",
    "attn_logit": "the logit curve the backtest chose (see models): paper 3.3's log-log fit per LR, or lr_shift",
    "diverged": "probability that the run ends at or above the loss at init (the study's criterion), from "
                "the calibrated loss distribution; probability_paper: that the attention logit passes 1e4 "
                "(paper 3.3)",
    "best_lr": "argmin of the predicted losses; interval: the narrowest LR range holding the level's share "
               "of the draws' argmins (odds: each LR's share)",
    "largest_stable_lr": "largest LR predicted not to diverge; at the top of the grid it is a lower bound",
    "lr_sensitivity": "the paper's LR sensitivity of the predicted losses; interval: the union of the draws' percentile "
                      "and basic-bootstrap intervals (a minimum over LRs is biased either way)",
    "interval": "calibrated on the study's own backtest (its largest width predicted from the smaller ones): "
                "bias-corrected by the backtest's median log error at each LR; half-width the split-conformal "
                "quantile, at the level, of the error a per-LR bias learned one width back leaves (4+ widths; "
                "with 3, the backtest's jackknife+ errors); with 2+ seeds, the final loss's half-width follows each "
                "LR's seed noise (calibration.noise_scales); scaled by extrapolation distance",
}


# ---------------------------------------------------------------------------------------------- fits

def raw_forecast(rows: list[dict], widths: Sequence[int], sizes: dict[int, float], n_target: float,
                 model: str, logit_model: str = "paper") -> dict:
    """Uncalibrated per-LR predictions at n_target from `widths` of one group's rows."""
    cells = _cells(rows)
    lrs = sorted({r["lr"] for r in rows})
    use = [w for w in sorted(widths) if all((w, lr) in cells for lr in lrs)]
    per_lr = []
    ns = [sizes[w] for w in use]
    table = [[cell_values(cells[(w, lr)]) for lr in lrs] for w in use]
    usable = [[v["diverged_fraction"] == 0 for v in row] for row in table]
    losses = fit_group_losses(model, ns, lrs, [[v["final_loss"] for v in row] for row in table], usable, n_target) \
        if use else [float("nan")] * len(lrs)
    logits = fit_group_logits(logit_model, ns, lrs, [[v["attn_logit"] for v in row] for row in table], n_target) \
        if use else [float("nan")] * len(lrs)
    for j, lr in enumerate(lrs):
        values = [row[j] for row in table]
        init = float(np.mean([v["init"] for v in values])) if values else float("nan")
        loss = losses[j]
        per_lr.append({"lr": lr, "init": init, "final_loss": loss,
                       "attn_logit": logits[j],
                       "diverged_fraction": values[-1]["diverged_fraction"] if values else 0.0})
    return {"lrs": lrs, "per_lr": per_lr, "widths": use,
            "distance": math.log(n_target / sizes[use[-1]]) if use else float("nan")}


def observed_forecast_shape(rows: list[dict], width: int) -> dict:
    """The quantities measured at one width (seed means), shaped like a forecast."""
    cells = _cells(rows)
    lrs = sorted(lr for (w, lr) in cells if w == width)
    per_lr = []
    for lr in lrs:
        v = cell_values(cells[(width, lr)])
        per_lr.append({"lr": lr, "init": v["init"], "final_loss": v["final_loss"], "attn_logit": v["attn_logit"],
                       "diverged": v["diverged_fraction"] >= 0.5})
    losses = [p["final_loss"] for p in per_lr]
    inits = [p["init"] for p in per_lr]
    return {"lrs": lrs, "per_lr": per_lr, "best_lr": best_lr(lrs, losses),
            "largest_stable_lr": largest_stable_lr(lrs, [p["diverged"] for p in per_lr]),
            "lr_sensitivity": lr_sensitivity(losses, inits)}


def _log_residual(observed, predicted) -> float | None:
    if _finite(observed) and _finite(predicted) and observed > 0 and predicted > 0:
        return math.log(observed / predicted)
    return None


# ---------------------------------------------------------------------------------------------- groups

def group_key(r: dict) -> tuple:
    return (r.get("optimizer", "adamw"), r["variant"], r["depth"], r.get("tag", ""))


def rows_by_group(results: list[dict], early_logits: dict[str, float]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        groups[group_key(r)].append({"width": r["width"], "lr": r["lr"], "final_loss": r["final_loss"],
                                     "init_loss": r["init_loss"], "early_logit": early_logits.get(r["run_id"]),
                                     "n_params": r["n_params"], "seed": r.get("seed", 0)})
    return groups


def _sizes(rows: list[dict]) -> dict[int, float]:
    return {r["width"]: float(r["n_params"]) for r in rows}


# ---------------------------------------------------------------------------------------------- backtest

def _observe(point: dict, observed: dict) -> dict:
    """Add observed, ratio and inside to a predicted point."""
    q = point["quantity"]
    by_lr = {p["lr"]: p for p in observed["per_lr"]}
    if point["lr"] is not None:
        seen = by_lr.get(point["lr"])
        value = None if seen is None else (int(seen["diverged"]) if q == "diverged" else seen[q])
    else:
        value = observed[q]
    ratio = (value / point["predicted"] if _finite(value) and _finite(point["predicted"]) and point["predicted"]
             and q not in ("diverged",) else None)
    # An observed largest stable LR at the top of the grid is itself "at least" that LR: it falls
    # inside a forecast bound [top, None] and outside an interval that ends below the top.
    inside = is_inside(value, point["interval"])
    return {**point, "observed": value, "ratio": ratio, "inside": inside}


def _residuals(raws: dict[tuple, dict], observed: dict[tuple, dict]) -> dict[str, dict[tuple, dict]]:
    """quantity -> group -> {lr: log(observed / predicted)} (diverged observations left out of the loss)."""
    out: dict[str, dict[tuple, dict]] = {q: {} for q in CONTINUOUS}
    for key, raw in raws.items():
        seen = {p["lr"]: p for p in observed[key]["per_lr"]}
        for q in CONTINUOUS:
            r = {}
            for p in raw["per_lr"]:
                o = seen.get(p["lr"])
                if o is None or (q == "final_loss" and o["diverged"]):
                    continue
                v = _log_residual(o[q], p[q])
                if v is not None:
                    r[p["lr"]] = v
            out[q][key] = r
    return out


def _calibrations(residuals: dict[str, dict[tuple, dict]], level: float, spread: dict[str, float],
                  exclude: tuple | None = None, previous: dict | None = None,
                  noise: dict | None = None, drift: bool = False) -> dict[str, Calibration]:
    """Per quantity class; `previous`: the earlier fold's residuals (the backtest one width back), whose
    change to these residuals is what the intervals are calibrated on (calibration.transfer_scores);
    `noise`: {quantity: {lr: seed-noise variance of a score}} (2+ seeds: per-LR half-widths)."""
    z = z_for(level)
    previous, noise = previous or {}, noise or {}
    return {q: calibrate(q, {k: v for k, v in residuals.get(q, {}).items() if k != exclude}, level,
                         seed_sd=spread.get(q, 0.0), floor=z * spread.get(q, 0.0),
                         previous={k: v for k, v in previous.get(q, {}).items() if k != exclude} or None,
                         noise_by_lr=noise.get(q), drift=drift and q == "final_loss")
            for q in CONTINUOUS}


def score_noise(groups: dict[tuple, list[dict]], widths: list[int], window: int | None = None) -> dict:
    """{"final_loss": {lr: seed-noise variance of one calibration score}} from the study's seed spread
    per LR and the scores' line leverage (`calibration.score_leverage`); {} with one seed."""
    sizes = _sizes(next(iter(groups.values()))) if groups else {}
    ok = len(widths) >= 3 and all(w in sizes for w in widths)
    noise = noise_by_lr(groups, score_leverage([math.log10(sizes[w]) for w in widths], len(groups), window)) if ok else {}
    return {"final_loss": noise} if noise else {}


def choose_models(groups: dict[tuple, list[dict]], widths: list[int], window: int | None = None
                  ) -> tuple[dict[str, str], dict]:
    """For the final loss and the attention logit, the curve with the smallest median absolute
    backtest log error (before the bias correction), among those the backtest's widths can fit
    (ties: the first listed, the simpler); ({quantity: name}, {quantity: {name: median |log error|}})."""
    held, used = widths[-1], last_widths(widths[:-1], window)
    seen = {k: observed_forecast_shape(rows, held) for k, rows in groups.items()}

    def errors(quantity: str, **models) -> float | None:
        raws = {}
        for key, rows in groups.items():
            sizes = _sizes(rows)
            raws[key] = raw_forecast([r for r in rows if r["width"] != held], used, sizes, sizes[held], **models)
        # the curve's own error, before the calibration's bias correction: a curve that needs less
        # correction depends less on the backtest's errors repeating at the target
        values = [abs(v) for vs in _residuals(raws, seen)[quantity].values() for v in vs.values()]
        return float(np.median(values)) if values else None

    scores: dict[str, dict] = {"final_loss": {}, "attn_logit": {}}
    for name, (_, need) in LOSS_MODELS.items():
        if need <= len(used):
            scores["final_loss"][name] = errors("final_loss", model=name)
    for name in LOGIT_MODELS:
        scores["attn_logit"][name] = errors("attn_logit", model="power_law", logit_model=name)
    chosen = {}
    for quantity, default in (("final_loss", "power_law"), ("attn_logit", "paper")):
        valid = {k: v for k, v in scores[quantity].items() if v is not None}
        chosen[quantity] = min(valid, key=valid.get) if valid else default
    return chosen, scores


def _forecast_raws(groups, widths, held, models):
    raws, seen = {}, {}
    for key, rows in groups.items():
        sizes = _sizes(rows)
        raws[key] = raw_forecast([r for r in rows if r["width"] != held], widths, sizes, sizes[held],
                                 models["final_loss"], models["attn_logit"])
        seen[key] = observed_forecast_shape(rows, held)
    return raws, seen


def backtest(groups: dict[tuple, list[dict]], widths: list[int], models: dict[str, str], level: float,
             spread: dict[str, float], seed: int = 0, noise: dict | None = None, window: int | None = None
             ) -> tuple[dict, dict, dict]:
    """Predict the largest width from the smaller ones; every point scored with intervals calibrated
    on the other groups' residuals (with one group: on the other LRs' residuals). Returns the
    summary's backtest, its residuals ({quantity: {group: {lr: log error}}}) and the earlier fold's."""
    held, used = widths[-1], last_widths(widths[:-1], window)
    raws, seen = _forecast_raws(groups, used, held, models)
    residuals = _residuals(raws, seen)
    previous = earlier_fold(groups, widths, models, window)
    points = []
    for key, raw in raws.items():
        fields = group_fields(key)
        if len(raws) > 1:
            points += [_observe(p, seen[key]) for p in
                       group_points(raw, _calibrations(residuals, level, spread, exclude=key, previous=previous, noise=noise),
                                    level, fields, seed)]
            continue
        # One group: each LR's points calibrated without that LR's residuals; the group's decisions
        # with all of them (there is nothing else to leave out).
        whole = group_points(raw, _calibrations(residuals, level, spread, previous=previous, noise=noise), level,
                             fields, seed)
        mine = [p for p in whole if p["lr"] is None]
        for lr in raw["lrs"]:
            held_out = {q: {key: {k: v for k, v in rs[key].items() if k != lr}} for q, rs in residuals.items()}
            cals = _calibrations(held_out, level, spread, previous=previous, noise=noise)
            mine += [p for p in group_points(raw, cals, level, fields, seed) if p["lr"] == lr]
        points += [_observe(p, seen[key]) for p in mine]
    return {"width": held, "from_widths": used, "models": models, "points": points,
            "coverage": coverage(points), "accuracy": accuracy(points, seen),
            "residuals": {q: {"|".join(map(str, k)): {f"{lr:g}": r for lr, r in v.items()} for k, v in rs.items()}
                          for q, rs in residuals.items()},
            "distance": next(iter(raws.values()))["distance"] if raws else None,
            "earlier_fold_width": widths[-2] if previous else None}, residuals, previous


def earlier_fold(groups: dict[tuple, list[dict]], widths: list[int], models: dict[str, str],
                 window: int | None = None) -> dict:
    """The backtest one width back (the second largest width from the ones below it), with the same
    curves: its residuals, set against the backtest's, show how much a per-LR error changes from one
    extrapolation to the next. Needs 4+ widths (the earlier fold then fits 2 or more; a curve that
    needs more falls back to the richest that fits); otherwise {}."""
    if len(widths) < 4:
        return {}
    smaller = {k: [r for r in rows if r["width"] != widths[-1]] for k, rows in groups.items()}
    return _residuals(*_forecast_raws(smaller, last_widths(widths[:-2], window), widths[-2], models))


# ---------------------------------------------------------------------------------------------- study

def forecast(results: list[dict], early_logits: dict[str, float], target: dict[int, float],
             level: float = DEFAULT_LEVEL, models: dict[str, str] | None = None, seed: int = 0,
             drift: bool = False, window: int | None = WINDOW) -> dict:
    """The study's forecast at the target size (target: depth -> parameter count), its backtest and
    its calibration: {"points", "groups", "backtest", "calibration", "models", ...}. `models`:
    {"final_loss": a LOSS_MODELS name, "attn_logit": a LOGIT_MODELS name}; None: chosen by backtest.
    `drift`: the final loss's bias keeps moving as it did between the last two folds
    (`calibration.transfer_drift`; off by default: judged and not adopted, docs/proxy.md)."""
    if not 0 < level < 1:
        raise ValueError(f"interval level must be in (0, 1), got {level}")
    groups = rows_by_group(results, early_logits)
    widths = sorted({r["width"] for r in results})
    spread = seed_spread(groups)
    scores: dict = {}
    if models is None:
        models, scores = choose_models(groups, widths, window) if len(widths) >= 3 else (
            {"final_loss": "power_law", "attn_logit": "paper"}, {})
    noise = score_noise(groups, widths, window)
    bt, residuals, previous = (backtest(groups, widths, models, level, spread, seed, noise, window) if len(widths) >= 3
                               else (None, {}, {}))
    if bt is not None:
        cals = _calibrations(residuals, level, spread, previous=previous, noise=noise, drift=drift)
        bt_distance = bt["distance"]
    else:
        cals, bt_distance = _calibrations({}, level, spread), None
    points, groups_out = [], []
    fit = last_widths(widths, window)
    for key, rows in groups.items():
        sizes = _sizes(rows)
        raw = raw_forecast(rows, fit, sizes, target[key[2]], models["final_loss"], models["attn_logit"])
        scale = max(raw["distance"] / bt_distance, 1.0) if bt_distance and raw["distance"] > 0 else 1.0
        lev = _leverage(models, widths, sizes, target[key[2]], len(groups), window) if bt is not None else {}
        mine = group_points(raw, {q: scaled(c, scale, lev.get(q, 1.0)) for q, c in cals.items()}, level,
                            group_fields(key), seed)
        points += mine
        groups_out.append({**group_fields(key), "widths": raw["widths"], "n_target": target[key[2]],
                           "distance_scale": scale,
                           **{p["quantity"]: {k: p.get(k) for k in ("predicted", "interval", "odds", "bound")
                                              if k in p} for p in mine if p["lr"] is None}})
    short = [f"{q} ({c.n} backtest points)" for q, c in cals.items() if not c.calibrated]
    note = (f"not calibrated: {len(widths)} width(s); a backtest needs 3 or more, so the intervals are wide "
            "defaults" if bt is None else f"not calibrated: {', '.join(short)}; a {level:.0%} interval needs "
            f"{math.ceil(level / (1 - level) - 1e-9)} or more, so these are wide defaults" if short else None)
    return {"points": points, "groups": groups_out, "level": level, "models": models,
            "model_text": {"final_loss": loss_model_text(models["final_loss"]),
                           "attn_logit": LOGIT_MODEL_TEXT[models["attn_logit"]]},
            "model_backtest_errors": scores,
            "calibration": {q: c.to_json() for q, c in cals.items()}, "calibration_note": note,
            "seed_spread": spread, "backtest": bt}


def _leverage(models: dict[str, str], widths: list[int], sizes: dict[int, float], n_target: float,
              n_groups: int = 1, window: int | None = None) -> dict:
    """Per quantity, the leverage ratio of the target's fit (on the `window` largest widths, default every
    one) to the backtest's, for the curves that are a least-squares line per LR in log size (power_law; paper's
    logit fit below 5 widths). With 4+ widths the scores are r_B - bias_A (bias: a median of n - 1
    groups, variance about pi / 2 / (n - 1) of one residual's, kappa) and the target keeps r_T - bias_B:
    the ratio of those variances for noise alone, sqrt((1 + h_T + kappa (1 + h_B)) / (1 + h_B + kappa (1 + h_A)))."""
    x = [math.log10(sizes[w]) for w in widths]
    xt = last_widths(x, window)
    h_t, h_b = line_leverage(xt, math.log10(n_target)), line_leverage(last_widths(x[:-1], window), x[-1])
    ratio = math.sqrt((1 + h_t) / (1 + h_b))
    if len(widths) >= 4:  # transfer scores: r_B - r_A at calibration, r_target - r_B at the target
        kappa = math.pi / 2 / max(n_groups - 1, 1)
        ratio = math.sqrt(((1 + h_t) + kappa * (1 + h_b)) / score_leverage(x, n_groups, window))
    lines = {"final_loss": models["final_loss"] == "power_law",
             "attn_logit": models["attn_logit"] == "paper" and logit_degree(len(xt)) == 1
             and logit_degree(len(widths) - 1) == 1}
    return {q: ratio for q, is_line in lines.items() if is_line}


def validate(train: list[dict], held: list[dict], early_logits: dict[str, float], target: dict[int, float],
             level: float = DEFAULT_LEVEL, models: dict[str, str] | None = None, seed: int = 0,
             drift: bool = False, window: int | None = WINDOW) -> dict:
    """Forecast the held-out width's size from `train` and score every point against `held`
    (the real larger width's runs); derived quantities only when `held` covers every grid LR."""
    fc = forecast(train, early_logits, target, level, models, seed, drift, window)
    held_groups = rows_by_group(held, early_logits)
    grid_lrs = sorted({r["lr"] for r in train})
    seen = {}
    for key, rows in held_groups.items():
        width = max(r["width"] for r in rows)
        seen[key] = observed_forecast_shape(rows, width)
    points = []
    for p in fc["points"]:
        key = (p["optimizer"], p["variant"], p["depth"], ("_" + p["setting"]) if p["setting"] else "")
        if key not in seen:
            continue
        if p["lr"] is None and seen[key]["lrs"] != grid_lrs:
            continue  # a subset of LRs (--validate-lrs) cannot check the best LR or the sensitivity
        if p["lr"] is not None and p["lr"] not in seen[key]["lrs"]:
            continue
        points.append(_observe(p, seen[key]))
    widths = sorted({r["width"] for r in train})
    floor = seed_noise_floor(rows_by_group(train, early_logits), held_groups, last_widths(widths, window), target,
                             max(r["width"] for r in held), fc["models"]["final_loss"]) if held and len(widths) >= 2 else None
    return {"points": points, "coverage": coverage(points), "accuracy": accuracy(points, seen),
            "models": fc["models"], "level": level, "seed_spread": seed_spread_by_lr(held_groups),
            "seeds": len({r.get("seed", 0) for r in held}), "noise_floor": floor}
