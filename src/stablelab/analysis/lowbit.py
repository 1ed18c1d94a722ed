"""Pure functions over the low-bit study's run records (`stablelab lowbit`).

A binary record: {"estimator", "o", "seed", "test_acc", "estimating_error", "gradient_stability"}.
A proxy record: {"optimizer", "precision", "lr", "seed", "final_loss", "init_loss", "diverged",
"steps": [...], "losses": [...], "grad_norms": [...]} (train loss and global gradient norm at the
logged steps).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from stablelab.analysis.proxy import lr_sensitivity

Record = Mapping[str, Any]


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def binary_table(runs: Sequence[Record]) -> list[dict]:
    """Per (estimator, o): mean and spread (max - min over seeds) of test accuracy, and the mean indicators."""
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for r in runs:
        groups[(r["estimator"], r["o"])].append(r)
    table = []
    for (estimator, o), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "ste", kv[0][1])):
        accs = [r["test_acc"] for r in rs]
        table.append({"estimator": estimator, "o": o, "seeds": len(rs), "test_acc_mean": _mean(accs),
                      "test_acc_spread": float(max(accs) - min(accs)),
                      "estimating_error": _mean(r["estimating_error"] for r in rs),
                      "gradient_stability": _mean(r["gradient_stability"] for r in rs)})
    return table


def best_reste_beats_ste(table: Sequence[Mapping]) -> dict | None:
    """The best ReSTE o against STE: accuracy difference and whether it exceeds the seed spread."""
    ste = [row for row in table if row["estimator"] == "ste"]
    reste = [row for row in table if row["estimator"] == "reste"]
    if not ste or not reste:
        return None
    best = max(reste, key=lambda row: row["test_acc_mean"])
    difference = best["test_acc_mean"] - ste[0]["test_acc_mean"]
    noise = max(best["test_acc_spread"], ste[0]["test_acc_spread"])
    return {"best_o": best["o"], "difference": difference, "seed_spread": noise,
            "beyond_seed_spread": bool(difference > noise) if best["seeds"] > 1 else None}


def grad_norm_spread(grad_norms: Sequence[float]) -> float:
    """Coefficient of variation (std / mean) of the logged global gradient norms (finite values)."""
    values = np.asarray([g for g in grad_norms if g is not None and math.isfinite(g)], dtype=float)
    if values.size < 2 or values.mean() == 0:
        return float("nan")
    return float(values.std() / values.mean())


def steps_to_reach(steps: Sequence[int], losses: Sequence[float], target: float) -> int | None:
    """The first logged step whose training loss is at or below `target` (None if never)."""
    for step, loss in zip(steps, losses):
        if loss is not None and math.isfinite(loss) and loss <= target:
            return int(step)
    return None


def _by(runs: Sequence[Record], *keys: str) -> dict[tuple, list[Record]]:
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for r in runs:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def sweep_table(runs: Sequence[Record], reference: tuple[str, str] = ("adamw", "fp32")) -> list[dict]:
    """Per (optimizer, precision): LR sensitivity (Wortsman et al. 2023) over the seed-mean final
    losses, the mean over LRs of the final-loss spread across seeds (None with one seed), best LR and loss, the mean gradient-norm spread, and the steps to reach the reference
    (optimizer, precision)'s final loss at the same LR (the mean over LRs where it is reached)."""
    cells = _by(runs, "optimizer", "precision", "lr")
    ref_loss = {lr: _mean(r["final_loss"] for r in cells.get((*reference, lr), []))
                for (_, _, lr) in cells}
    table = []
    for (optimizer, precision), rs in _by(runs, "optimizer", "precision").items():
        lrs = sorted({r["lr"] for r in rs})
        finals = [_mean(r["final_loss"] for r in cells[(optimizer, precision, lr)]) for lr in lrs]
        inits = [_mean(r["init_loss"] for r in cells[(optimizer, precision, lr)]) for lr in lrs]
        reached = [steps_to_reach(r["steps"], r["losses"], ref_loss[r["lr"]]) for r in rs
                   if math.isfinite(ref_loss.get(r["lr"], float("nan")))]
        finite = [f if math.isfinite(f) else float("inf") for f in finals]
        best = int(np.argmin(finite))
        spreads = [max(r["final_loss"] for r in cells[(optimizer, precision, lr)])
                   - min(r["final_loss"] for r in cells[(optimizer, precision, lr)]) for lr in lrs]
        table.append({"optimizer": optimizer, "precision": precision, "lrs": lrs, "final_losses": finals,
                      "seed_spread": _mean(spreads) if len(rs) > len(lrs) else None,
                      "lr_sensitivity": lr_sensitivity(finals, inits), "best_lr": lrs[best],
                      "best_loss": finals[best], "diverged": sum(bool(r["diverged"]) for r in rs),
                      "grad_norm_spread": _mean(grad_norm_spread(r["grad_norms"]) for r in rs),
                      "reached_reference": sum(s is not None for s in reached), "runs": len(rs),
                      "steps_to_reference": _mean(s for s in reached if s is not None)})
    return table


def states_comparison(runs: Sequence[Record], full: str = "adamw", eight: str = "adamw8bit") -> list[dict]:
    """Per LR: the 8-bit-state run against the float32-state run. `difference` = mean over seeds of
    final loss (8-bit) - (fp32); `seed_noise` = the larger spread (max - min over seeds) of either;
    `curve_gap` = the largest |difference| of the seed-mean training-loss curves at logged steps.
    `within_seed_noise` is None with a single seed (no noise estimate)."""
    cells = _by(runs, "optimizer", "lr")
    rows = []
    for lr in sorted({r["lr"] for r in runs}):
        a, b = cells.get((full, lr), []), cells.get((eight, lr), [])
        if not a or not b:
            continue
        fa, fb = [r["final_loss"] for r in a], [r["final_loss"] for r in b]
        difference = _mean(fb) - _mean(fa)
        noise = max(max(fa) - min(fa), max(fb) - min(fb))
        curve_a, curve_b = _mean_curve(a), _mean_curve(b)
        n = min(len(curve_a), len(curve_b))
        gap = float(np.nanmax(np.abs(curve_b[:n] - curve_a[:n]))) if n else float("nan")
        rows.append({"lr": lr, "fp32_loss": _mean(fa), "8bit_loss": _mean(fb), "difference": difference,
                     "seed_noise": noise, "curve_gap": gap, "seeds": min(len(a), len(b)),
                     "within_seed_noise": (bool(abs(difference) <= noise) if min(len(a), len(b)) > 1 else None)})
    return rows


def _mean_curve(runs: Sequence[Record]) -> np.ndarray:
    n = min(len(r["losses"]) for r in runs)
    curves = np.array([[np.nan if v is None else v for v in r["losses"][:n]] for r in runs], dtype=float)
    return curves.mean(axis=0)
