"""The seed-noise floor of a forecast check (pure): what a forecast that is right in expectation would
still score, from the study's own seed spread.

A parametric bootstrap (Efron & Tibshirani 1993, ch. 6): every training cell's seed mean is moved by
N(0, sd(width, lr) / sqrt(k)) (sd: the seed spread measured at that width and LR, `cells.seed_spread_by_lr`;
k seeds), the curve refitted and read at the check's size; the spread of those forecasts is the fit's
noise. The check's own seed mean adds sd(check width, lr) / sqrt(k). Together they set the narrowest
honest 90% interval (2 x 1.645 sd) and the median |error| (0.674 sd) that seed noise alone allows: a
check far above them is limited by the curve, and more seeds would not bring it down."""

from __future__ import annotations

import math

import numpy as np

from stablelab.analysis.cells import _cells, seed_spread_by_lr, seeds_per_cell


def _sd_by_lr(groups: dict[tuple, list[dict]], width: int) -> dict[float, float]:
    at = {k: [r for r in rows if r["width"] == width] for k, rows in groups.items()}
    return {float(lr): v["sd"] for lr, v in seed_spread_by_lr(at).items() if lr != "all"}


def _cell_means(rows: list[dict]) -> list[dict]:
    """One row per (width, lr) cell holding its runs' geometric-mean final loss (cells with a non-finite run left out)."""
    return [{**rs[0], "seed": 0, "final_loss": float(np.exp(np.mean(np.log([r["final_loss"] for r in rs]))))}
            for rs in _cells(rows).values() if all(r["final_loss"] and r["final_loss"] > 0 for r in rs)]


def seed_noise_floor(train: dict[tuple, list[dict]], held: dict[tuple, list[dict]], fit_widths: list[int],
                     n_check: dict[int, float], check_width: int, curve: str, draws: int = 200,
                     seed: int = 0) -> dict | None:
    """{"by_lr": {lr: {"forecast_sd", "check_sd", "sd"}}, "median_sd", "width_90", "median_abs_error"} in
    log space for one curve fitted on `fit_widths`; train/held: group -> rows (`prediction.rows_by_group`),
    n_check: depth -> parameters at the check width. None with fewer than 2 seeds."""
    from stablelab.analysis.prediction import raw_forecast

    seeds = seeds_per_cell(train)
    if seeds < 2:
        return None
    rng = np.random.default_rng(seed)
    sd = {w: _sd_by_lr(train, w) for w in fit_widths}
    spreads = []
    for key, rows in train.items():
        sizes = {r["width"]: float(r["n_params"]) for r in rows}
        means = _cell_means(rows)
        logs = []
        for _ in range(draws):
            moved = [{**m, "final_loss": m["final_loss"] * math.exp(rng.normal(0.0, sd.get(m["width"], {}).get(m["lr"], 0.0)
                                                                              / math.sqrt(seeds)))} for m in means]
            raw = raw_forecast(moved, fit_widths, sizes, n_check[key[2]], curve)
            logs.append([math.log(p["final_loss"]) if p["final_loss"] and p["final_loss"] > 0 else np.nan
                         for p in raw["per_lr"]])
        spreads.append(np.nanstd(np.array(logs, float), axis=0))
    lrs = sorted({r["lr"] for rows in train.values() for r in rows})
    fit = np.nanmedian(np.array(spreads), axis=0)
    own = _sd_by_lr(held, check_width)
    by_lr = {}
    for lr, f in zip(lrs, fit):
        c = own.get(float(lr), float("nan")) / math.sqrt(seeds)
        by_lr[f"{lr:g}"] = {"forecast_sd": float(f), "check_sd": float(c), "sd": float(math.hypot(f, c))}
    total = float(np.nanmedian([v["sd"] for v in by_lr.values()]))
    # two-sided 90% normal interval, 2 x 1.645 sd; median |N(0, sd)| = 0.674 sd
    return {"by_lr": by_lr, "median_sd": total, "width_90": 3.29 * total, "median_abs_error": 0.674 * total,
            "curve": curve, "seeds": seeds, "draws": draws}
