"""Point accuracy of a scored forecast (pure): final-loss errors and the best LR's hits and regret
(issue 25's accuracy targets; `prediction.backtest` and `prediction.validate` report them)."""

from __future__ import annotations

import numpy as np

from stablelab.analysis.cells import _finite


def group_fields(key: tuple) -> dict:
    """A group key (optimizer, variant, depth, tag) as the summary's fields."""
    return {"optimizer": key[0], "variant": key[1], "depth": key[2], "setting": key[3].lstrip("_")}


def accuracy(points: list[dict], observed: dict[tuple, dict]) -> dict:
    """Point accuracy: final-loss errors (observed / predicted - 1) and the best LR's hits and regret."""
    loss = [p["observed"] / p["predicted"] - 1 for p in points if p["quantity"] == "final_loss"
            and _finite(p.get("observed")) and _finite(p["predicted"]) and p["predicted"] > 0]
    exact, within, regret = [], [], []
    by_fields = {tuple(group_fields(k).values()): v for k, v in observed.items()}
    for p in points:
        if p["quantity"] != "best_lr" or p.get("observed") is None or p["predicted"] is None:
            continue
        seen = by_fields.get((p["optimizer"], p["variant"], p["depth"], p["setting"]))
        if seen is None:
            continue
        lrs = seen["lrs"]
        exact.append(p["predicted"] == p["observed"])
        if p["predicted"] in lrs:
            within.append(abs(lrs.index(p["predicted"]) - lrs.index(p["observed"])) <= 1)
            losses = {q["lr"]: q["final_loss"] for q in seen["per_lr"]}
            regret.append(losses[p["predicted"]] / losses[p["observed"]] - 1)
    med = (lambda v: float(np.median(v)) if v else None)
    mean = (lambda v: float(np.mean(v)) if v else None)
    return {"final_loss_median_abs_error": med([abs(v) for v in loss]),
            "final_loss_median_signed_error": med(loss),
            "best_lr_exact": mean(exact), "best_lr_within_one": mean(within),
            "best_lr_median_regret": med(regret), "n_final_loss": len(loss), "n_groups": len(exact)}
