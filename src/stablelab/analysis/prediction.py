"""Outcome predictions for a larger width, with intervals, from a proxy study's small widths (pure).

What is extrapolated, and how (the same for every group of variant x optimizer x depth x axis value):
- **final loss at each LR**: log(loss) fitted linearly in log10(parameter count) (a power law
  L = a N^b per LR), read at the target size and capped at the loss at initialisation; a diverged
  run counts as the loss at initialisation (the paper's LR-sensitivity convention).
- **attention logit at the prediction step** (paper 3.3): log10(layer-0 max logit) against
  log10(N), degree min(2, n - 2), at least 1 (`analysis.proxy.fit_attention_logit_growth`).
- **best LR, largest LR that does not diverge, LR sensitivity**: computed from the predicted
  per-LR losses (diverged = predicted loss at or above the loss at initialisation), not fitted.

Intervals: every quantity is recomputed under alternative fits, and the interval is the range of
the point prediction and those alternatives:
- leave-one-width-out: the fit without one width (a single remaining width extrapolates as a
  constant: "no trend");
- seed bootstrap (with 2 or more seeds): 200 resamples of the seeds at each width, 5th-95th
  percentile of the resampled predictions.
With one width, nothing is fitted: the prediction is that width's value and the interval is a point."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np

from stablelab.analysis.proxy import best_lr, largest_stable_lr, lr_sensitivity

METHODS = {
    "final_loss": "power law per LR: log(loss) linear in log10(params), capped at the loss at init "
                  "(diverged runs count as the loss at init)",
    "attn_logit": "paper 3.3: log10(layer-0 max attention logit at the prediction step) against "
                  "log10(params), degree min(2, n_widths - 2), at least 1",
    "best_lr": "argmin over the grid's LRs of the predicted final losses",
    "largest_stable_lr": "largest LR whose predicted final loss is below the loss at init",
    "lr_sensitivity": "the paper's LR sensitivity of the predicted per-LR losses",
    "interval": "range of the point prediction, the leave-one-width-out fits and (2+ seeds) the 5-95% "
                "seed-bootstrap predictions",
}
BOOTSTRAP = 200


def extrapolate(x: Sequence[float], y: Sequence[float], x_target: float, degree: int = 1) -> float:
    """Polynomial fit of y on x evaluated at x_target; one point: that point (a constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0:
        return float("nan")
    if len(x) == 1:
        return float(y[0])
    return float(np.polyval(np.polyfit(x, y, min(degree, len(x) - 1)), x_target))


def _logit_degree(n: int) -> int:
    return max(1, min(2, n - 2))


def _loss_curve(sizes, losses, init, target):
    """Predicted loss at log10 size `target` from (sizes, capped losses)."""
    y = np.log(np.maximum(np.asarray(losses, float), 1e-12))
    return min(float(np.exp(extrapolate(np.log10(sizes), y, target, 1))), init)


def _logit_curve(sizes, logits, target):
    pts = [(s, z) for s, z in zip(sizes, logits) if z is not None and math.isfinite(z) and z > 0]
    if not pts:
        return float("nan")
    x = np.log10([p[0] for p in pts])
    return float(10 ** extrapolate(x, np.log10([p[1] for p in pts]), target, _logit_degree(len(pts))))


def _derived(lrs, losses, inits):
    diverged = [not (loss < init) for loss, init in zip(losses, inits)]
    return {"best_lr": best_lr(lrs, losses), "largest_stable_lr": largest_stable_lr(lrs, diverged),
            "lr_sensitivity": lr_sensitivity(losses, inits), "diverged": diverged}


def _interval(point, alternatives, bootstrap):
    values = [v for v in [point, *alternatives] if v is not None and math.isfinite(v)]
    if bootstrap:
        boot = [v for v in bootstrap if v is not None and math.isfinite(v)]
        if boot:
            values += [float(np.percentile(boot, 5)), float(np.percentile(boot, 95))]
    if not values:
        return None
    return [min(values), max(values)]


def _scenario(cells, widths, lrs, sizes, target, leave_out=None, rng=None):
    """(per-LR predicted losses, per-LR predicted logits, init losses) under one alternative fit."""
    use = [w for w in widths if w != leave_out]
    losses, logits, inits = [], [], []
    for lr in lrs:
        xs, ls, zs, init_values = [], [], [], []
        for w in use:
            runs = cells[(w, lr)]
            if rng is not None:
                runs = [runs[i] for i in rng.integers(0, len(runs), len(runs))]
            init = float(np.mean([r["init_loss"] for r in runs]))
            capped = [min(r["final_loss"], r["init_loss"]) if r["final_loss"] is not None
                      and math.isfinite(r["final_loss"]) else r["init_loss"] for r in runs]
            z = [r["early_logit"] for r in runs if r["early_logit"] is not None and math.isfinite(r["early_logit"])]
            xs.append(sizes[w]), ls.append(float(np.mean(capped))), init_values.append(init)
            zs.append(float(np.mean(z)) if z else None)
        init = float(np.mean(init_values))
        inits.append(init)
        losses.append(_loss_curve(xs, ls, init, target))
        logits.append(_logit_curve(xs, zs, target))
    return losses, logits, inits


def predict_group(runs: list[dict], sizes: dict[int, float], n_target: float, seed: int = 0) -> dict:
    """Predictions at `n_target` parameters for one group (one variant, optimizer, depth, axis value).

    runs: per-seed rows {"width", "lr", "final_loss", "init_loss", "early_logit"};
    sizes: width -> parameter count."""
    cells: dict[tuple, list] = defaultdict(list)
    for r in runs:
        cells[(r["width"], r["lr"])].append(r)
    widths = sorted({r["width"] for r in runs})
    lrs = sorted({r["lr"] for r in runs})
    target = math.log10(n_target)
    losses, logits, inits = _scenario(cells, widths, lrs, sizes, target)
    point = _derived(lrs, losses, inits)
    alternatives = [_scenario(cells, widths, lrs, sizes, target, leave_out=w) for w in widths] if len(widths) > 1 else []
    boot = []
    if min(len(v) for v in cells.values()) > 1:
        rng = np.random.default_rng(seed)
        boot = [_scenario(cells, widths, lrs, sizes, target, rng=rng) for _ in range(BOOTSTRAP)]
    alt_d = [_derived(lrs, a[0], a[2]) for a in alternatives]
    boot_d = [_derived(lrs, b[0], b[2]) for b in boot]

    per_lr = []
    for i, lr in enumerate(lrs):
        per_lr.append({
            "lr": lr,
            "final_loss": {"predicted": losses[i], "interval": _interval(losses[i], [a[0][i] for a in alternatives],
                                                                         [b[0][i] for b in boot])},
            "attn_logit": {"predicted": logits[i], "interval": _interval(logits[i], [a[1][i] for a in alternatives],
                                                                         [b[1][i] for b in boot])},
            "diverges": point["diverged"][i],
        })
    out = {"per_lr": per_lr, "widths": widths, "n_target": n_target}
    for key in ("best_lr", "largest_stable_lr", "lr_sensitivity"):
        out[key] = {"predicted": point[key], "interval": _interval(point[key], [a[key] for a in alt_d],
                                                                   [b[key] for b in boot_d])}
    return out


def observed_group(runs: list[dict]) -> dict:
    """The same quantities measured at one width (seed means), for the check against a prediction."""
    cells: dict[float, list] = defaultdict(list)
    for r in runs:
        cells[r["lr"]].append(r)
    lrs = sorted(cells)
    losses, inits, logits = [], [], []
    for lr in lrs:
        rs = cells[lr]
        init = float(np.mean([r["init_loss"] for r in rs]))
        capped = [min(r["final_loss"], r["init_loss"]) if r["final_loss"] is not None
                  and math.isfinite(r["final_loss"]) else r["init_loss"] for r in rs]
        z = [r["early_logit"] for r in rs if r["early_logit"] is not None and math.isfinite(r["early_logit"])]
        losses.append(float(np.mean(capped))), inits.append(init)
        logits.append(float(np.mean(z)) if z else float("nan"))
    derived = _derived(lrs, losses, inits)
    return {"per_lr": [{"lr": lr, "final_loss": losses[i], "attn_logit": logits[i], "diverges": derived["diverged"][i]}
                       for i, lr in enumerate(lrs)],
            **{k: derived[k] for k in ("best_lr", "largest_stable_lr", "lr_sensitivity")}}


def _point(quantity, group, lr, predicted, observed) -> dict:
    value, interval = predicted["predicted"], predicted["interval"]
    ok = value is not None and observed is not None and math.isfinite(value) and math.isfinite(observed)
    ratio = observed / value if ok and value != 0 else None
    slack = 1e-9 * max(abs(interval[0]), abs(interval[1])) if interval else 0.0  # rounding, not a margin
    inside = bool(ok and interval is not None and interval[0] - slack <= observed <= interval[1] + slack)
    return {"quantity": quantity, **group, "lr": lr, "predicted": value, "interval": interval,
            "observed": observed, "ratio": ratio, "inside": inside}


def check_prediction(prediction: dict, observed: dict, group: dict) -> list[dict]:
    """Predicted against observed for every quantity of one group: validation points."""
    points = []
    by_lr = {row["lr"]: row for row in observed["per_lr"]}
    for row in prediction["per_lr"]:
        seen = by_lr.get(row["lr"])
        if seen is None:
            continue
        points.append(_point("final_loss", group, row["lr"], row["final_loss"], seen["final_loss"]))
        points.append(_point("attn_logit", group, row["lr"], row["attn_logit"], seen["attn_logit"]))
    for key in ("best_lr", "largest_stable_lr", "lr_sensitivity"):
        points.append(_point(key, group, None, prediction[key], observed[key]))
    return points


def group_key(r: dict) -> tuple:
    return (r.get("optimizer", "adamw"), r["variant"], r["depth"], r.get("tag", ""))


def _group_fields(key: tuple) -> dict:
    return {"optimizer": key[0], "variant": key[1], "depth": key[2], "setting": key[3].lstrip("_")}


def _rows(results: list[dict], early_logits: dict[str, float]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        groups[group_key(r)].append({"width": r["width"], "lr": r["lr"], "final_loss": r["final_loss"],
                                     "init_loss": r["init_loss"], "early_logit": early_logits.get(r["run_id"]),
                                     "n_params": r["n_params"]})
    return groups


def outcome_predictions(results: list[dict], early_logits: dict[str, float], target: dict[int, float]) -> list[dict]:
    """One prediction per group at the target size; target: depth -> parameter count at the target width."""
    out = []
    for key, rows in _rows(results, early_logits).items():
        sizes = {r["width"]: r["n_params"] for r in rows}
        out.append({**_group_fields(key), **predict_group(rows, sizes, target[key[2]])})
    return out


def validation_points(train: list[dict], held: list[dict], early_logits: dict[str, float],
                      target: dict[int, float]) -> list[dict]:
    """Predict from `train` (the study's widths) at the size of `held` (the real larger width's
    runs) and compare, quantity by quantity."""
    points = []
    held_rows = _rows(held, early_logits)
    for prediction in outcome_predictions(train, early_logits, target):
        key = (prediction["optimizer"], prediction["variant"], prediction["depth"],
               ("_" + prediction["setting"]) if prediction["setting"] else "")
        if key in held_rows:
            points += check_prediction(prediction, observed_group(held_rows[key]), _group_fields(key))
    return points
