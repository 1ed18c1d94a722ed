"""One grid cell (width x LR of a group) of a proxy study, and the seed noise between its runs (pure).

A cell's value is the seed mean: the final loss capped at the loss at initialisation (a diverged run
counts as the loss at init, the paper's LR-sensitivity convention), the geometric mean of the
layer-0 attention logits, and the share of runs that diverged. The seed spread is the pooled
sd of log values within cells (the usual one-way ANOVA within-group estimate)."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _capped(r: dict) -> float:
    return min(r["final_loss"], r["init_loss"]) if _finite(r["final_loss"]) else r["init_loss"]


def cell_values(runs: list[dict]) -> dict:
    """Seed means at one (width, lr): capped loss, init loss, logit, diverged fraction."""
    logits = [r["early_logit"] for r in runs if _finite(r.get("early_logit")) and r["early_logit"] > 0]
    diverged = [(not _finite(r["final_loss"])) or r["final_loss"] >= r["init_loss"] for r in runs]
    return {"final_loss": float(np.mean([_capped(r) for r in runs])),
            "init": float(np.mean([r["init_loss"] for r in runs])),
            "attn_logit": float(np.exp(np.mean(np.log(logits)))) if logits else float("nan"),
            "diverged_fraction": float(np.mean(diverged)), "seeds": len(runs)}


def _cells(rows: list[dict]) -> dict[tuple, list[dict]]:
    cells: dict[tuple, list] = defaultdict(list)
    for r in rows:
        cells[(r["width"], r["lr"])].append(r)
    return cells


def _pooled_log_sd(groups: dict[tuple, list[dict]], value, by=lambda width, lr: "all") -> dict:
    """key -> (sd, degrees of freedom): the pooled within-cell sd of log value over the cells with 2+
    runs that did not diverge, pooled per `by(width, lr)`."""
    sums: dict = {}
    for rows in groups.values():
        for (width, lr), runs in _cells(rows).items():
            v = [math.log(value(r)) for r in runs if _finite(value(r)) and value(r) > 0
                 and _finite(r["final_loss"]) and r["final_loss"] < r["init_loss"]]
            if len(v) > 1:
                ss, dof = sums.get(by(width, lr), (0.0, 0))
                sums[by(width, lr)] = (ss + float(np.sum((np.asarray(v) - np.mean(v)) ** 2)), dof + len(v) - 1)
    return {k: (math.sqrt(ss / dof), dof) for k, (ss, dof) in sums.items()}


def seed_spread(groups: dict[tuple, list[dict]]) -> dict[str, float]:
    """Pooled seed-to-seed sd of log final loss and log attention logit within cells (0: one seed)."""
    out = {}
    for quantity, value in (("final_loss", _capped), ("attn_logit", lambda r: r.get("early_logit"))):
        out[quantity] = _pooled_log_sd(groups, value).get("all", (0.0, 0))[0]
    return out


def seed_spread_by_lr(groups: dict[tuple, list[dict]]) -> dict:
    """The final loss's seed spread per LR ({"0.001": {"sd", "dof"}, ...}, pooled over widths and groups),
    and pooled over every LR ("all"); empty with one seed. Against one run, a forecast that knew the
    seed mean exactly still errs by |N(0, sd)|: median 0.674 sd, and its 90% interval is at least
    2 x 1.645 sd wide: the noise floor of a check scored on single runs."""
    by_lr = _pooled_log_sd(groups, _capped, by=lambda width, lr: f"{lr:g}")
    pooled = _pooled_log_sd(groups, _capped)
    ordered = sorted(by_lr.items(), key=lambda kv: float(kv[0])) + list(pooled.items())
    return {k: {"sd": sd, "dof": dof} for k, (sd, dof) in ordered}


def seeds_per_cell(groups: dict[tuple, list[dict]]) -> int:
    """The fewest runs any cell holds (the k of a k-seed mean)."""
    return min((len(runs) for rows in groups.values() for runs in _cells(rows).values()), default=0)


def noise_by_lr(groups: dict[tuple, list[dict]], factor: float) -> dict[float, float]:
    """{lr: factor x sd(lr)^2 / k}: the seed-noise variance a quantity built from k-seed cell means
    carries at each LR, `factor` (a fit's leverage) times one cell mean's variance; sd(lr) is the
    final loss's pooled seed spread at that LR (`seed_spread_by_lr`). {} with one seed, or when an
    LR of the grid has no spread measured (all its cells diverged)."""
    k = seeds_per_cell(groups)
    spread = {k_: v["sd"] for k_, v in seed_spread_by_lr(groups).items() if k_ != "all"}
    lrs = sorted({r["lr"] for rows in groups.values() for r in rows})
    if k < 2 or any(f"{lr:g}" not in spread for lr in lrs):
        return {}
    return {lr: factor * spread[f"{lr:g}"] ** 2 / k for lr in lrs}
