"""The proxy report's outcome sections: predictions with intervals, the prediction checked against
a real larger width, and LR sensitivity per value of each extra sweep axis (rendering only)."""

from __future__ import annotations

import math


def _g(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _iv(interval) -> str:
    if not interval:
        return "-"
    lo, hi = interval
    if hi is None:
        return f">= {_g(lo)}"
    if lo is None:
        return f"<= {_g(hi)}"
    return f"[{_g(lo)}, {_g(hi)}]"


def _name(row) -> str:
    return row["variant"] + (f" {row['setting']}" if row.get("setting") else "")


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _odds(odds: dict | None) -> str:
    if not odds:
        return "-"
    shown = sorted(((p, lr) for lr, p in odds.items() if p >= 0.05), reverse=True)
    return ", ".join(f"{lr}: {_pct(p)}" for p, lr in shown)


def _stable(entry: dict) -> str:
    value = entry.get("predicted")
    return "none" if value is None else (f">= {_g(value)}" if entry.get("bound") else _g(value))


def prediction_rows(summary: dict) -> tuple[list[str], list[list], list[str], list[list]]:
    pred = summary["prediction"]
    per_lr = [["/".join(filter(None, [r["optimizer"] if r["optimizer"] != "adamw" else "", _name(r)])),
               r["depth"], r["lr"], _g((r.get("final_loss") or {}).get("predicted")),
               _iv((r.get("final_loss") or {}).get("interval")), _g((r.get("attn_logit") or {}).get("predicted")),
               _iv((r.get("attn_logit") or {}).get("interval")), _pct(r.get("diverge_probability")),
               _pct(_paper(pred, r))]
              for r in pred["per_lr"]]
    groups = [[_name(g), g["depth"], _g(g["best_lr"]["predicted"]), _iv(g["best_lr"]["interval"]),
               _odds(g["best_lr"].get("odds")), _stable(g["largest_stable_lr"]),
               _iv(g["largest_stable_lr"]["interval"]),
               _g(g["lr_sensitivity"]["predicted"]), _iv(g["lr_sensitivity"]["interval"])]
              for g in pred.get("groups", [])]
    level = _pct(pred.get("level"))
    return (["variant", "depth", "lr", "final loss", f"{level} interval", "attn logit @ step", f"{level} interval",
             "P(diverges)", "P(logit > 1e4)"], per_lr,
            ["variant", "depth", "best lr", f"{level} set", "odds", "largest stable lr", f"{level} interval",
             "LR sensitivity", f"{level} interval"], groups)


def _paper(pred: dict, row: dict):
    for p in pred.get("points", []):
        if p["quantity"] == "diverged" and p["lr"] == row["lr"] and p["variant"] == row["variant"] \
                and p["depth"] == row["depth"] and p["setting"] == row.get("setting", ""):
            return p.get("probability_paper")
    return None


def _checked_rows(points: list[dict]) -> list[list]:
    rows = []
    for p in points:
        if p["quantity"] == "diverged":
            predicted, observed = f"P={_pct(p.get('probability'))}", "yes" if p["observed"] else "no"
            interval = {(0, 0): "no", (1, 1): "yes", (0, 1): "either"}.get(tuple(p["interval"]), "-")
        else:
            predicted, observed, interval = _g(p["predicted"]), _g(p["observed"]), _iv(p["interval"])
        rows.append([p["quantity"], _name(p), _g(p["lr"]), predicted, interval, observed, _g(p.get("ratio")),
                     "yes" if p["inside"] else "NO"])
    return rows


_CHECK_HEADER = ["quantity", "variant", "lr", "predicted", "interval", "observed", "observed / predicted", "inside"]


def validation_rows(summary: dict) -> tuple[list[str], list[list]]:
    return _CHECK_HEADER, _checked_rows(summary["validation"]["points"])


def backtest_rows(summary: dict) -> tuple[list[str], list[list]]:
    return _CHECK_HEADER, _checked_rows(summary["backtest"]["points"])


def coverage_text(coverage: dict) -> str:
    per = [f"{q} {c['inside']}/{c['total']}" for q, c in coverage.items() if q != "all"]
    total = coverage.get("all", {"inside": 0, "total": 0})
    return f"{total['inside']}/{total['total']} inside their intervals ({', '.join(per)})"


def accuracy_text(acc: dict) -> str:
    parts = []
    if acc.get("final_loss_median_abs_error") is not None:
        parts.append(f"final loss median error {100 * acc['final_loss_median_abs_error']:.1f}% "
                     f"(signed {100 * acc['final_loss_median_signed_error']:+.1f}%, observed vs predicted)")
    if acc.get("best_lr_exact") is not None:
        parts.append(f"best LR exact for {_pct(acc['best_lr_exact'])} of groups, within one grid step for "
                     f"{_pct(acc['best_lr_within_one'])}, median regret {100 * acc['best_lr_median_regret']:.2f}%")
    return "; ".join(parts)


def validation_line(summary: dict) -> str:
    """One finding: inside/total overall and per predicted quantity, and the point accuracy."""
    v = summary["validation"]
    return (f"Prediction checked at width {v['width']} (trained for real, {v['n_runs']} runs, predicted from widths "
            f"{', '.join(map(str, v['from_widths']))}): {coverage_text(v['coverage'])} at level "
            f"{_pct(v.get('level'))}; {accuracy_text(v.get('accuracy') or {})}.{seed_noise_text(v)}")


def seed_noise_text(v: dict) -> str:
    """The check's own noise floor, when it ran 2+ seeds (cells.seed_spread_by_lr)."""
    spread = v.get("seed_spread") or {}
    if "all" not in spread:
        return ""
    by_lr = {k: s["sd"] for k, s in spread.items() if k != "all"}
    lo, hi = min(by_lr, key=by_lr.get), max(by_lr, key=by_lr.get)
    sd, seeds = spread["all"]["sd"], max(int(v.get("seeds") or 1), 1)
    what = f"the {seeds}-seed mean it is scored on" if seeds > 1 else "one run"
    return (f" The check's own seed noise: the final loss varies by {100 * sd:.1f}% (sd of log loss between seeds at "
            f"width {v['width']}; {100 * by_lr[lo]:.1f}% at lr {lo} to {100 * by_lr[hi]:.1f}% at lr {hi}), so a forecast "
            f"that knew the expected loss exactly would still miss {what} by a median "
            f"{100 * 0.674 * sd / math.sqrt(seeds):.1f}%.{floor_text(v)}")


def floor_text(v: dict) -> str:
    """The check's error against its seed-noise floor (analysis.noise_floor), when it ran 2+ seeds."""
    floor, acc = v.get("noise_floor"), v.get("accuracy") or {}
    error = acc.get("final_loss_median_abs_error")
    if not floor or error is None:
        return ""
    ratio = error / floor["median_abs_error"] if floor["median_abs_error"] > 0 else float("inf")
    # 2x: a median of 7-28 correlated |errors| varies by up to about 40% of itself (a sample median's sd,
    # sqrt(p (1 - p) / n) / f(m) with f the density of |N(0, 1)| at its median 0.674, n the ~7 LRs)
    verdict = ("the curve, not the seeds, limits this forecast: more seeds would not bring its error down"
               if ratio >= 2 else "the forecast is within twice its seed-noise floor: more seeds would narrow it")
    return (f" Seed noise alone (the grid's, refitted, plus the check's) would leave a median error of "
            f"{100 * floor['median_abs_error']:.1f}% and a 90% interval {100 * floor['width_90']:.1f}% wide; this "
            f"check's error was {100 * error:.1f}% ({ratio:.1f}x): {verdict}.")


def backtest_line(summary: dict) -> str | None:
    b = summary.get("backtest")
    if not b:
        return None
    return (f"Backtest (how well this study predicts itself): width {b['width']} predicted from widths "
            f"{', '.join(map(str, b['from_widths']))}: {coverage_text(b['coverage'])}; "
            f"{accuracy_text(b.get('accuracy') or {})}.")


def calibration_text(pred: dict) -> str:
    cal = pred.get("calibration") or {}
    parts = []
    for q, c in cal.items():
        if c["calibrated"]:
            by_lr = list((c.get("bias_by_lr") or {}).values())
            bias = (f"bias {100 * (math.exp(min(by_lr)) - 1):+.1f}% to {100 * (math.exp(max(by_lr)) - 1):+.1f}% by LR"
                    if by_lr else f"bias {100 * (math.exp(c['bias']) - 1):+.1f}%")
            how = (", scored against the bias learned one width back" if c.get("scores") == "transfer"
                   else ", scored against the other variants' bias")
            scales = list((c.get("width_by_lr") or {}).values())
            spread = (f"x/÷ {math.exp(c['half_width'] * min(scales)):.4g} to {math.exp(c['half_width'] * max(scales)):.4g}"
                      " by LR (each LR's seed noise)" if scales else f"x/÷ {math.exp(c['half_width']):.4g}")
            parts.append(f"{q}: {bias}, {spread} from {c['n']} backtest residuals{how}")
        else:
            parts.append(f"{q}: NOT calibrated (wide default x/÷ {math.exp(c['half_width']):.3g})")
    models = pred.get("model_text") or {}
    scales = sorted({g.get("distance_scale", 1.0) for g in pred.get("groups", [])})
    scale = f", scaled x{scales[0]:.2g} to the target's distance" if scales and scales[0] != 1.0 else ""
    return (f"Intervals at level {_pct(pred.get('level'))}, calibrated on the study's own backtest (bias-corrected "
            f"point, split-conformal half-width; at the backtest's distance{scale}): " + "; ".join(parts) + ". "
            + (pred["calibration_note"] + ". " if pred.get("calibration_note") else "")
            + "Curves chosen by backtest error: " + "; ".join(f"{k}: {v}" for k, v in models.items()) + ".")


def forecast_figure(summary: dict):
    """Final loss against LR per variant: the forecast at the target width with its interval, the
    backtest's forecast against what its width measured, and the check's observations."""
    import matplotlib.pyplot as plt

    pred = summary["prediction"]
    points = pred.get("points", [])
    names = list(dict.fromkeys(_name(p) for p in points))
    cols = min(len(names), 4) or 1
    rows = -(-len(names) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    series = [("forecast", points, f"width {pred['width']} forecast", "C0", False)]
    if summary.get("backtest"):
        series.append(("backtest", summary["backtest"]["points"], f"backtest: width {summary['backtest']['width']}",
                       "C1", True))
    if summary.get("validation"):
        series.append(("check", summary["validation"]["points"], f"check: width {summary['validation']['width']}",
                       "C2", True))
    for ax, name in zip(axes.flat, names):
        for i, (kind, pts, label, color, observed) in enumerate(series):
            mine = sorted((p for p in pts if p["quantity"] == "final_loss" and _name(p) == name
                           and p["predicted"] is not None and p["interval"]), key=lambda p: p["lr"])
            if not mine:
                continue
            xs = [p["lr"] * (1.06 ** (i - 1)) for p in mine]
            ys = [p["predicted"] for p in mine]
            err = [[y - p["interval"][0] for y, p in zip(ys, mine)], [p["interval"][1] - y for y, p in zip(ys, mine)]]
            ax.errorbar(xs, ys, yerr=err, fmt="o", ms=3, capsize=2, color=color, label=f"{label} (predicted)")
            if observed:
                ax.scatter(xs, [p["observed"] for p in mine], marker="x", s=30, color=color, zorder=5,
                           label=f"{label} (observed)")
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("peak LR")
    axes.flat[0].set_ylabel("final loss")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"Forecast with {_pct(pred.get('level'))} intervals; x: observed", fontsize=9)
    fig.tight_layout()
    return fig


def axis_rows(summary: dict) -> list[tuple[str, list[str], list[list]]]:
    """One table per extra axis: LR sensitivity per value, variant and scale."""
    tables = []
    for axis, values in (summary.get("axes") or {}).items():
        scales = sorted({(e["width"], e["depth"]) for e in summary["scales"].values()})
        rows = []
        for value, label in values.items():
            for variant in dict.fromkeys(e["variant"] for e in summary["scales"].values()):
                cells = []
                for w, d in scales:
                    vals = [e["lr_sensitivity"] for e in summary["scales"].values()
                            if e["variant"] == variant and (e["width"], e["depth"]) == (w, d)
                            and label in e["setting"].split("_")]
                    cells.append(_g(sum(vals) / len(vals)) if vals else "-")
                rows.append([value, variant, *cells])
        tables.append((axis, [axis, "variant", *[f"w{w} d{d}" for w, d in scales]], rows))
    return tables


def outcome_sections(page, summary: dict, add=None) -> None:
    pred = summary["prediction"]
    page.heading("Predicted outcomes at the larger width")
    methods = pred.get("methods", {})
    page.paragraph(f"Predicted for width {pred['width']} ({pred['n_params'] / 1e6:.2f}M parameters). "
                   + calibration_text(pred) + " How each quantity is derived: "
                   + "; ".join(f"{k}: {v}" for k, v in methods.items() if k != "interval") + ".")
    if add is not None and pred.get("points"):
        add("forecast", forecast_figure(summary), "forecast of final loss with intervals",
            "Final loss per LR: the forecast at the target width with its interval; the backtest's forecast of "
            "the study's own largest width from the smaller ones, and (with --validate-width) the check, each "
            "with what was measured.")
    h1, r1, h2, r2 = prediction_rows(summary)
    page.table(h2, r2)
    page.table(h1, r1)
    if summary.get("backtest"):
        page.heading("Backtest: how well this study predicts itself")
        page.paragraph(backtest_line(summary) + " Each point's interval is calibrated without its own group "
                       "(leave-one-group-out), so this coverage is an honest estimate of the forecast's.")
        page.table(*backtest_rows(summary))
    if summary.get("validation"):
        page.heading("Prediction checked")
        page.paragraph(validation_line(summary) + " Each row: the prediction from the small widths, its interval, "
                       "and what the real run at this width measured.")
        page.table(*validation_rows(summary))
    for axis, header, rows in axis_rows(summary):
        page.heading(f"LR sensitivity per {axis}")
        page.paragraph("Mean over the other axes' values; the LR-vs-loss panels above show each curve.")
        page.table(header, rows)


def outcome_markdown(summary: dict) -> list[str]:
    def md(header, rows):
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
            "| " + " | ".join(_g(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]

    pred = summary["prediction"]
    h1, r1, h2, r2 = prediction_rows(summary)
    lines = ["", f"## Predicted outcomes at width {pred['width']}", "", calibration_text(pred), "", *md(h2, r2), "",
             *md(h1, r1)]
    if summary.get("backtest"):
        lines += ["", "## Backtest: how well this study predicts itself", "", backtest_line(summary), "",
                  *md(*backtest_rows(summary))]
    if summary.get("validation"):
        lines += ["", "## Prediction checked", "", validation_line(summary), "", *md(*validation_rows(summary))]
    for axis, header, rows in axis_rows(summary):
        lines += ["", f"## LR sensitivity per {axis}", "", *md(header, rows)]
    return lines
