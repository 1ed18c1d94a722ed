"""Pure functions over the records of `stablelab sgd-stability`: the bound checks, trends against the
learning rate, hovering at a threshold, loss spikes and monotonicity."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

Record = Mapping[str, Any]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Kendall's tau-a: (concordant - discordant pairs) / all pairs (Kendall 1938); None below 2 points."""
    pairs = [(x, y) for x, y in zip(xs, ys) if _finite(x) and _finite(y)]
    n = len(pairs)
    if n < 2:
        return None
    score = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = pairs[j][0] - pairs[i][0], pairs[j][1] - pairs[i][1]
            score += (dx * dy > 0) - (dx * dy < 0)
    return score / (n * (n - 1) / 2)


def hover_statistics(steps: Sequence[int], ratios: Sequence[float], band: float = 0.15) -> dict:
    """How a ratio (sharpness / threshold) behaves once it first reaches 1 - band: the step, the
    fraction of the checks from then on within +-band of 1, and `hovers` (at least half of them)."""
    first = next((i for i, r in enumerate(ratios) if _finite(r) and r >= 1 - band), None)
    if first is None:
        return {"reached_step": None, "checks_after": 0, "fraction_within_band_after": None, "hovers": False,
                "max_ratio": max((r for r in ratios if _finite(r)), default=None)}
    after = [r for r in ratios[first:] if _finite(r)]
    inside = sum(1 for r in after if abs(r - 1) <= band) / max(1, len(after))
    return {"reached_step": steps[first], "checks_after": len(after), "fraction_within_band_after": inside,
            "hovers": bool(inside >= 0.5 and len(after) >= 4), "max_ratio": max(after, default=None)}


def mixture_ratio(row: Record) -> float | None:
    """lr/2 * (trace/B + (1 - 1/B) lambda_max): a batch-size-aware reading of the two bounds, ours, after
    Mulayoff & Michaeli 2023 (SGD's mean-square stability threshold equals that of a process that takes
    a single-sample step with probability about 1/B and a full-batch step otherwise); it is lr*trace/2
    at B = 1 and lr*lambda_max/2 at B = n. A heuristic to read the B > 1 runs, not a theorem."""
    b, trace, lam, lr = row.get("batch_size"), row.get("trace"), row.get("lambda_max"), row.get("lr")
    if not (_finite(trace) and _finite(lam) and _finite(lr) and b):
        return None
    if row.get("optimizer") == "gd":
        return lr * lam / 2
    return lr / 2 * (trace / b + (1 - 1 / b) * lam)


def bound_check(runs: Iterable[Record], models: Sequence[str], bound: float = 1.1,
                interpolated_below: float = 1e-6) -> dict:
    """Per model: every SGD run with train_loss < interpolated_below, its largest lr * trace / 2 and
    whether all are <= bound (Wu & Su 2023: trace(H) <= 2/lr at a linearly stable SGD minimum); the
    same per batch size, since the bound is a batch-size-1 statement (see docs/dynamics.md)."""
    out = {}
    for model in models:
        rows = [r for r in runs if r["model"] == model and r["optimizer"] == "sgd"
                and _finite(r.get("train_loss")) and r["train_loss"] < interpolated_below]
        by_batch = {}
        for b in sorted({r["batch_size"] for r in rows}):
            values = [r["lr_trace_over_2"] for r in rows if r["batch_size"] == b]
            mixed = [mixture_ratio(r) for r in rows if r["batch_size"] == b]
            per_b = [r["lr_trace_over_2B"] for r in rows if r["batch_size"] == b and _finite(r.get("lr_trace_over_2B"))]
            stayed = [r["stayed"] for r in rows if r["batch_size"] == b and "stayed" in r]
            by_batch[str(b)] = {"runs": len(values), "max_lr_trace_over_2": max(values),
                                "all_within": all(v <= bound for v in values),
                                "max_lr_trace_over_2B": max(per_b, default=None),
                                "batch_bound_all_within": all(v <= bound for v in per_b),
                                "stayed": sum(bool(v) for v in stayed), "confirmed": len(stayed),
                                "max_mixture_ratio": max(mixed), "mixture_all_within": all(v <= bound for v in mixed)}
        values = [r["lr_trace_over_2"] for r in rows]
        out[model] = {"interpolating_sgd_runs": len(rows), "max_lr_trace_over_2": max(values, default=None),
                      "all_within": bool(rows) and all(v <= bound for v in values), "by_batch_size": by_batch}
    return out


def norm_trend(runs: Iterable[Record], models: Sequence[str]) -> dict:
    """Per model and SGD batch size: Kendall's tau of norm and of test error against lr over the
    interpolating runs (negative: falls as lr grows), and whether the norm falls monotonically."""
    out = {}
    for model in models:
        per = {}
        rows = [r for r in runs if r["model"] == model and r.get("interpolated")]
        for optimizer, b in sorted({(r["optimizer"], r["batch_size"]) for r in rows}):
            chosen = sorted((r for r in rows if r["optimizer"] == optimizer and r["batch_size"] == b),
                            key=lambda r: r["lr"])
            lrs, norms = [r["lr"] for r in chosen], [r["norm"] for r in chosen]
            per[f"{optimizer} batch {b}"] = {
                "lrs": lrs, "norms": norms, "test_errors": [r["test_error"] for r in chosen],
                "norm_tau": kendall_tau(lrs, norms),
                "test_error_tau": kendall_tau(lrs, [r["test_error"] for r in chosen]),
                "norm_falls": len(norms) >= 2 and all(b2 < a for a, b2 in zip(norms, norms[1:])),
                "norm_change": (norms[-1] - norms[0]) / norms[0] if len(norms) >= 2 and norms[0] else None}
        out[model] = per
    return out


def loss_spikes(losses: Sequence[float], factor: float = 1.2, skip: int = 10) -> list[int]:
    """Indices after `skip` where the loss exceeds `factor` x its running minimum (entering a spike)."""
    spikes, running, inside = [], math.inf, False
    for i, value in enumerate(losses):
        high = i >= skip and _finite(value) and value > factor * running
        if high and not inside:
            spikes.append(i)
        inside = high
        if _finite(value):
            running = min(running, value)
    return spikes


def warmup_summary(runs: Iterable[Record]) -> list[dict]:
    """One line per warm-up run: whether its preconditioned sharpness passed 38/lr(t) during the
    checked steps, and whether the run went unstable (the prediction Gilmer et al. 2022 suggest)."""
    return [{"lr": r["lr"], "warmup_steps": r["warmup_steps"], "max_ratio": r["max_ratio"],
             "crossed_threshold": _finite(r["max_ratio"]) and r["max_ratio"] >= 1.0,
             "unstable": r["unstable"], "final_loss": r["final_loss"]} for r in runs]


def prediction_agreement(lines: Sequence[Record]) -> float | None:
    """Fraction of warm-up runs where 'crossed 38/lr early' equals 'went unstable or ended worse than
    the same LR's best run by more than 5%'."""
    if not lines:
        return None
    best = {}
    for line in lines:
        if _finite(line["final_loss"]):
            best[line["lr"]] = min(best.get(line["lr"], math.inf), line["final_loss"])
    hits = 0
    for line in lines:
        worse = not _finite(line["final_loss"]) or line["final_loss"] > 1.05 * best.get(line["lr"], math.inf)
        hits += line["crossed_threshold"] == (line["unstable"] or worse)
    return hits / len(lines)
