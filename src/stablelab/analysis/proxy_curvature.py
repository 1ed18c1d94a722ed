"""Two readings of the proxy study's sweep that the paper and its neighbours use to explain where
training breaks, as pure functions of the runs' results and rows.

- Warm-up against curvature (Gilmer et al. 2022, "A loss curvature perspective on training
  instability"): per run, the largest Adam-preconditioned sharpness over 38/lr(t) during the first
  steps (`--sharpness-every`), whether it crossed 1, and whether that predicts the run going
  unstable (diverged, or ending > 5% worse than the best warm-up of the same variant, scale and LR).
- Gradient RMS against AdamW eps (Wortsman et al. 2023, section 3.4): per weight matrix and width,
  the median gradient RMS = ||g|| / sqrt(numel) over the second half of training; when it falls
  towards eps, Adam's update shrinks (the "eps floor")."""

from __future__ import annotations

import math
import statistics
from typing import Iterable, Sequence

WORSE = 1.05  # "ended worse": final loss above 1.05 x the best warm-up at the same point


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _point(r: dict) -> tuple:
    return (r.get("optimizer", "adamw"), r["variant"], r["width"], r["depth"], r["lr"], r.get("eps"),
            r.get("weight_decay"), r.get("precision", "fp32"), r.get("mup_simple", False))


def warmup_curvature(results: Iterable[dict]) -> dict | None:
    """Lines (one per run with sharpness checks) and the agreement of 'crossed 38/lr(t) early' with
    'went unstable'; None when no run was checked."""
    runs = [r for r in results if r.get("sharpness_checks")]
    if not runs:
        return None
    best: dict[tuple, float] = {}
    for r in runs:
        if _finite(r["final_loss"]) and not r["diverged"]:
            best[_point(r)] = min(best.get(_point(r), math.inf), r["final_loss"])
    lines = []
    for r in runs:
        ratio = r.get("max_sharpness_ratio")
        crossed = _finite(ratio) and ratio >= 1.0
        worse = not _finite(r["final_loss"]) or r["final_loss"] > WORSE * best.get(_point(r), math.inf)
        unstable = bool(r["diverged"] or worse)
        lines.append({"variant": r["variant"], "width": r["width"], "depth": r["depth"], "lr": r["lr"],
                      "warmup_fraction": r["warmup_fraction"], "checks": len(r["sharpness_checks"]),
                      "max_ratio": ratio, "crossed": crossed, "diverged": bool(r["diverged"]),
                      "final_loss": r["final_loss"], "unstable": unstable})
    lines.sort(key=lambda x: (x["variant"], x["width"], x["depth"], x["lr"], x["warmup_fraction"]))
    agree = sum(line["crossed"] == line["unstable"] for line in lines)
    # Does more warm-up keep sharpness lower? Per point, the max ratio against warm-up length.
    monotone, compared = 0, 0
    for key in {(x["variant"], x["width"], x["depth"], x["lr"]) for x in lines}:
        ratios = [x["max_ratio"] for x in lines if (x["variant"], x["width"], x["depth"], x["lr"]) == key]
        if len(ratios) >= 2 and all(_finite(v) for v in ratios):
            compared += 1
            monotone += all(b <= a for a, b in zip(ratios, ratios[1:]))
    return {"lines": lines, "agreement": agree / len(lines),
            "longer_warmup_lowers_sharpness": f"{monotone}/{compared}" if compared else None}


def grad_rms_per_layer(rows: Sequence[dict], numels: dict[str, int], steps: int) -> dict[str, float]:
    """Median over the logged steps of the second half of training of ||g|| / sqrt(numel), per
    weight matrix (`grad_norm/<name>` columns of a run's rows, numel from `numels`)."""
    out = {}
    for name, n in numels.items():
        values = [row.get(f"grad_norm/{name}") for row in rows if row.get("step", -1) >= steps // 2]
        values = [v / math.sqrt(n) for v in values if _finite(v)]
        if values:
            out[name] = statistics.median(values)
    return out


def grad_rms_table(results: Sequence[dict], rows_by_run: dict[str, list[dict]], lr: float) -> list[dict]:
    """One entry per width and eps: the per-layer gradient RMS of the first variant at `lr`, the other
    swept axes (depth, warm-up, weight decay, precision, muP, optimizer, seed) held at the values of
    the first such run."""
    at_lr = [r for r in results if r["lr"] == lr and r.get("param_numels") and r["run_id"] in rows_by_run]
    if not at_lr:
        return []
    held = ("variant", "depth", "warmup_fraction", "weight_decay", "precision", "mup_simple", "optimizer", "seed")
    reference = {k: at_lr[0].get(k) for k in held}
    table = []
    for r in at_lr:
        if any(r.get(k) != v for k, v in reference.items()):
            continue
        per_layer = grad_rms_per_layer(rows_by_run[r["run_id"]], r["param_numels"], r["steps_done"])
        if per_layer:
            table.append({"variant": r["variant"], "width": r["width"], "depth": r["depth"], "eps": r.get("eps"),
                          "lr": lr, "warmup_fraction": r.get("warmup_fraction"), "grad_rms": per_layer})
    return sorted(table, key=lambda e: (e["eps"] or 0, e["width"]))


def reference_lr(lrs: Sequence[float], target: float = 1e-2) -> float:
    """The grid's LR nearest `target` on a log scale (the eps figure reads one LR)."""
    return min(lrs, key=lambda lr: abs(math.log(lr / target)))
