"""Turn a proxy study's run results into its summary (pure: dicts in, dict out)."""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import mean
from typing import Iterable

from stablelab.analysis.prediction import DEFAULT_LEVEL, METHODS, forecast
from stablelab.analysis.proxy import (ATTN_LOGIT_DANGER, best_lr, first_divergent_lr,
                                      fit_attention_logit_growth, largest_stable_lr, lr_sensitivity)


def _nanmean(values: Iterable[float | None]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return mean(finite) if finite else float("nan")


def _scale_key(width: int, depth: int, depths: list[int], tag: str = "") -> str:
    # The interface keys LR sensitivity by str(width); with a depth sweep, "WxD" keeps them apart;
    # with extra axes, their values follow ("64 wu0.01").
    key = str(width) if len(depths) == 1 else f"{width}x{depth}"
    return f"{key} {tag.lstrip('_').replace('_', ' ')}" if tag else key


def _tag(r: dict) -> str:
    return r.get("tag") or ""


def summarize(results: list[dict], early_logits: dict[str, float], lrs: list[float],
              depths: list[int], prediction: dict, level: float = DEFAULT_LEVEL) -> dict:
    """results: result.json of every run; early_logits: run_id -> layer-0 max attention logit at the
    prediction step; prediction: {"width", "n_params", "step", "sizes": {width: n_params}} and
    optionally "n_params_by_depth": {depth: n_params at the target width}."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        groups[(r.get("optimizer", "adamw"), r["variant"], _tag(r), r["width"], r["depth"], r["lr"])].append(r)

    points = []  # one per (optimizer, variant, axis values, width, depth, lr), averaged over seeds
    for (opt, variant, tag, width, depth, lr), runs in sorted(groups.items()):
        points.append({
            "optimizer": opt, "variant": variant, "setting": tag.lstrip("_"), "width": width, "depth": depth,
            "lr": lr, "seeds": len(runs),
            "final_loss": _nanmean(r["final_loss"] for r in runs)
            if all(r["final_loss"] is not None and math.isfinite(r["final_loss"]) for r in runs) else float("nan"),
            "init_loss": _nanmean(r["init_loss"] for r in runs),
            "diverged": any(r["diverged"] for r in runs),
            "diverged_fraction": sum(r["diverged"] for r in runs) / len(runs),
            "max_attn_logit": _nanmean(r["max_attn_logit"] for r in runs),
            "final_log_z": _nanmean(r["final_log_z"] for r in runs),
            "early_attn_logit_l0": _nanmean(early_logits.get(r["run_id"]) for r in runs),
            "n_params": runs[0]["n_params"],
        })

    optimizers = sorted({p["optimizer"] for p in points})
    settings = list(dict.fromkeys(p["setting"] for p in points))
    scales: dict[str, dict] = {}
    sensitivity: dict = {}
    for opt in optimizers:
        for variant in dict.fromkeys(p["variant"] for p in points):
            for setting in settings:
                for width, depth in sorted({(p["width"], p["depth"]) for p in points}):
                    curve = sorted((p for p in points if (p["optimizer"], p["variant"], p["setting"], p["width"],
                                                          p["depth"]) == (opt, variant, setting, width, depth)),
                                   key=lambda p: p["lr"])
                    if not curve:
                        continue
                    c_lrs = [p["lr"] for p in curve]
                    losses = [p["final_loss"] for p in curve]
                    diverged = [p["diverged"] for p in curve]
                    key = _scale_key(width, depth, depths, setting)
                    entry = {
                        "optimizer": opt, "variant": variant, "setting": setting, "width": width, "depth": depth,
                        "lr_sensitivity": lr_sensitivity(losses, [p["init_loss"] for p in curve]),
                        "best_lr": best_lr(c_lrs, losses),
                        "best_loss": min((v for v in losses if math.isfinite(v)), default=float("nan")),
                        "largest_stable_lr": largest_stable_lr(c_lrs, diverged),
                        "diverges_from_lr": first_divergent_lr(c_lrs, diverged),
                    }
                    scales[f"{opt}|{variant}|{key}"] = entry
                    target = sensitivity if len(optimizers) == 1 else sensitivity.setdefault(opt, {})
                    target.setdefault(variant, {})[key] = entry["lr_sensitivity"]

    by_depth = {int(d): n for d, n in (prediction.get("n_params_by_depth") or {}).items()}
    target_n = {d: by_depth.get(d, prediction["n_params"]) for d in {p["depth"] for p in points}}
    fc = forecast(results, early_logits, target_n, level)
    outcomes = {(g["optimizer"], g["variant"], g["depth"], g["setting"]): g for g in fc["groups"]}
    per_point = {(p["optimizer"], p["variant"], p["depth"], p["setting"], p["lr"], p["quantity"]): p
                 for p in fc["points"]}
    predictions = []
    for (opt, variant, depth, setting), outcome in outcomes.items():
        for lr in lrs:
            curve = sorted((p for p in points if (p["optimizer"], p["variant"], p["depth"], p["setting"], p["lr"])
                            == (opt, variant, depth, setting, lr)), key=lambda p: p["n_params"])
            fit = fit_attention_logit_growth([p["n_params"] for p in curve],
                                             [p["early_attn_logit_l0"] for p in curve], lr)
            predicted = fit.predict(target_n[depth]) if fit else None

            def point(quantity, _key=(opt, variant, depth, setting, lr)):
                p = per_point.get((*_key, quantity))
                return None if p is None else {k: p.get(k) for k in ("predicted", "interval", "probability",
                                                                     "probability_paper") if k in p}
            predictions.append({
                "optimizer": opt, "variant": variant, "depth": depth, "setting": setting, "lr": lr,
                "observed": {str(p["width"]): p["early_attn_logit_l0"] for p in curve},
                "observed_n_params": {str(p["width"]): p["n_params"] for p in curve},
                "fit_degree": fit.degree if fit else None,
                "fit_coefficients": list(fit.coefficients) if fit else None,
                "predicted": predicted,
                "predicted_unstable": bool(predicted is not None and predicted > ATTN_LOGIT_DANGER),
                "final_loss": point("final_loss"), "attn_logit": point("attn_logit"),
                "diverges": bool((point("diverged") or {}).get("predicted")),
                "diverge_probability": (point("diverged") or {}).get("probability"),
            })
    groups_out = [{k: g[k] for k in ("optimizer", "variant", "depth", "setting", "widths", "n_target", "distance_scale",
                                     "best_lr", "largest_stable_lr", "lr_sensitivity")} for g in outcomes.values()]
    first = groups_out[0] if groups_out else {}
    headline = {key: {**first.get(key, {"predicted": None, "interval": None}),
                      "variant": first.get("variant"),
                      "by_variant": {f"{g['variant']}" + (f" {g['setting']}" if g["setting"] else ""): g[key]
                                     for g in groups_out}}
                for key in ("best_lr", "largest_stable_lr", "lr_sensitivity")}

    runs = [{k: r.get(k) for k in ("run_id", "optimizer", "variant", "tag", "width", "depth", "lr", "seed",
                                    "final_loss", "init_loss", "diverged", "diverged_reason",
                                    "max_attn_logit", "final_log_z", "final_log_z_max", "n_params",
                                    "steps_done", "wall_s", "events")} for r in results]
    return {"runs": runs, "points": points, "lr_sensitivity": sensitivity, "scales": scales,
            "prediction": {**prediction, "threshold": ATTN_LOGIT_DANGER, "per_lr": predictions,
                           "groups": groups_out, **headline, "methods": METHODS, "level": level,
                           "points": fc["points"], "models": fc["models"], "model_text": fc["model_text"],
                           "model_backtest_errors": fc["model_backtest_errors"],
                           "calibration": fc["calibration"], "calibration_note": fc["calibration_note"],
                           "seed_spread": fc["seed_spread"]},
            "backtest": fc["backtest"]}


def findings(summary: dict) -> list[str]:
    """Plain-language findings, each backed by numbers in the summary."""
    lines = []
    scales = list(summary["scales"].values())
    points = summary["points"]
    multi_opt = len({s["optimizer"] for s in scales}) > 1
    tag = (lambda s: f"[{s['optimizer']}] ") if multi_opt else (lambda s: "")
    variants = list(dict.fromkeys(s["variant"] for s in scales))

    for s in scales:
        if s["diverges_from_lr"] is not None:
            lines.append(f"{tag(s)}{s['variant']}: width {s['width']} (depth {s['depth']}) diverges from "
                         f"lr {s['diverges_from_lr']:g}; largest stable lr "
                         f"{'none' if s['largest_stable_lr'] is None else format(s['largest_stable_lr'], 'g')}.")
    if not any(s["diverges_from_lr"] is not None for s in scales):
        lines.append("No run diverged by the paper's criterion (non-finite loss, or final loss above the "
                     "loss at initialisation); instability shows as worse final loss at high LR instead.")

    def sens(variant):
        return {(s["optimizer"], s["width"], s["depth"], s.get("setting", "")): s["lr_sensitivity"]
                for s in scales if s["variant"] == variant}

    if "baseline" in variants:
        base = sens("baseline")
        for other in [v for v in variants if v != "baseline"]:
            o = sens(other)
            common = sorted(set(base) & set(o))
            if not common:
                continue
            lower = sum(o[k] < base[k] for k in common)
            pairs = ", ".join(f"w{k[1]}{' ' + k[3] if k[3] else ''}: {base[k]:.3f} -> {o[k]:.3f}" for k in common)
            lines.append(f"{other} lowers LR sensitivity relative to baseline at {lower}/{len(common)} "
                         f"scales ({pairs}).")

    top_lr = max(p["lr"] for p in points)
    for variant in variants:
        at_top = [p for p in points if p["variant"] == variant and p["lr"] == top_lr]
        if at_top:
            worst = max(at_top, key=lambda p: p["max_attn_logit"] if math.isfinite(p["max_attn_logit"]) else -1)
            lines.append(f"{variant}: at lr {top_lr:g} the max attention logit reaches "
                         f"{worst['max_attn_logit']:.3g} (width {worst['width']}); final loss "
                         + ", ".join(f"w{p['width']} {p['final_loss']:.3f}" for p in sorted(at_top, key=lambda p: p['width']))
                         + ".")

    with_z = [p for p in points if "z_loss" in p["variant"]]
    without_z = [p for p in points if "z_loss" not in p["variant"]]
    if with_z and without_z:
        lz_without = max((abs(p["final_log_z"]) for p in without_z if math.isfinite(p["final_log_z"])), default=float("nan"))
        lz_with = max((abs(p["final_log_z"]) for p in with_z if math.isfinite(p["final_log_z"])), default=float("nan"))
        diverging = lz_without > 20
        lines.append(
            f"Output logits: max |log Z| at the end is {lz_without:.2f} without z-loss and {lz_with:.2f} with it; "
            + ("output-logit divergence appeared without z-loss." if diverging else
               "no output-logit divergence (|log Z| stayed below 20); the paper sees it late in long runs "
               "without weight decay (the logit-divergence preset is the CPU-sized attempt).")
        )

    pred = summary["prediction"]
    divergent = [p for p in pred.get("points", []) if p["quantity"] == "diverged"]
    by_loss = [p for p in divergent if p["probability"] >= 0.5]
    by_logit = [p for p in divergent if (p.get("probability_paper") or 0) >= 0.5]

    def names(ps, key):
        return "; ".join(f"{p['variant']} lr {p['lr']:g} ({p[key]:.0%})" for p in ps) or "none"

    if by_loss or by_logit:
        lines.append(f"Prediction for width {pred['width']} ({pred['n_params'] / 1e6:.1f}M params), P >= 50%: "
                     "final loss at or above the loss at init (the study's divergence) for "
                     f"{names(by_loss, 'probability')}"
                     f"; layer-0 attention logit at step {pred['step']} above {pred['threshold']:g} (the paper's sign "
                     f"of divergence, 3.3) for {names(by_logit, 'probability_paper')}.")
    else:
        lines.append(f"Prediction for width {pred['width']}: no LR is predicted to diverge or to cross "
                     f"{pred['threshold']:g} in layer 0 at step {pred['step']} (each P < 50%).")
    best = [g for g in pred.get("groups", []) if g["best_lr"].get("predicted") is not None]
    if best:
        lines.append(f"Best LR predicted for width {pred['width']}: " + "; ".join(
            f"{g['variant']}{' ' + g['setting'] if g['setting'] else ''} {g['best_lr']['predicted']:g} (odds "
            + ", ".join(f"{lr} {o:.0%}" for lr, o in g["best_lr"].get("odds", {}).items() if o >= 0.05) + ")"
            for g in best) + ".")
    return lines
