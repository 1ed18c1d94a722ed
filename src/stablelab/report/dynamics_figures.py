"""Figures, page and summary.md of `stablelab sgd-stability`, from its summary dict (see
studies/sgd_stability.py): one figure per section, the tables beside them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from stablelab.report.html import Page

Summary = Mapping[str, Any]


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def stability_figure(runs):
    """Per model (columns): stability ratio (lr*trace/2 for SGD, lr*lambda/2 for GD), norm, test error vs lr."""
    plt = _plt()
    models = list(dict.fromkeys(r["model"] for r in runs))
    fig, axes = plt.subplots(3, len(models), figsize=(4.6 * len(models), 9), squeeze=False)
    for c, model in enumerate(models):
        rows = [r for r in runs if r["model"] == model]
        plotted = any(r.get("interpolated") for r in rows)
        for i, key in enumerate(sorted({(r["optimizer"], r["batch_size"]) for r in rows})):
            chosen = sorted((r for r in rows if (r["optimizer"], r["batch_size"]) == key and r.get("interpolated")),
                            key=lambda r: r["lr"])
            label = "GD" if key[0] == "gd" else f"SGD B={key[1]}"
            ratio = "lr_lambda_over_2" if key[0] == "gd" else "lr_trace_over_2"
            lrs = [r["lr"] for r in chosen]
            axes[0][c].plot(lrs, [r[ratio] for r in chosen], "o-", color=f"C{i}", label=label)
            if key[0] == "sgd" and key[1] > 1:  # the batch-size form of the bound (docs/dynamics.md)
                axes[0][c].plot(lrs, [r.get("lr_trace_over_2B") for r in chosen], "s:", color=f"C{i}",
                                label=f"{label}: lr*trace/(2B)")
            axes[1][c].plot(lrs, [r["norm"] for r in chosen], "o-", color=f"C{i}", label=label)
            axes[2][c].plot(lrs, [r["test_error"] for r in chosen], "o-", color=f"C{i}", label=label)
        axes[0][c].axhline(1.0, color="k", linestyle="--", linewidth=1)
        axes[0][c].set_title(f"{model}: lr*trace/2 (SGD), lr*lambda/2 (GD)", fontsize=10)
        axes[1][c].set_title("norm at the minimum")
        axes[2][c].set_title("test error (half MSE)")
        for r in range(3):
            if plotted:
                axes[r][c].set_xscale("log")
            axes[r][c].set_xlabel("learning rate")
        if plotted:
            axes[0][c].legend(fontsize=8)
    fig.tight_layout()
    return fig


def ratio_figure(records, title: str, label, x_key: str = "steps", y_key: str = "ratio", band: float | None = None,
                 log: bool = False):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, r in enumerate(records):
        ax.plot(r[x_key], r[y_key], ".-", color=f"C{i}", label=label(r))
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1)
    if band:
        ax.axhspan(1 - band, 1 + band, color="0.9")
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def opposing_figure(record):
    plt = _plt()
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    lr = record["lr"]
    axes[0].plot(record["steps"], [s * lr / 2 for s in record["sharpness"]], ".-")
    axes[0].axhline(1.0, color="k", linestyle="--", linewidth=1)
    axes[0].set_title("sharpness x lr / 2 (1 = edge of stability)")
    axes[1].plot(record["steps"], record["group_1_loss"], label="planted group 1")
    axes[1].plot(record["steps"], record["group_2_loss"], label="planted group 2")
    axes[1].plot(record["steps"], record["train_loss"], "k", label="all")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=8)
    axes[1].set_title("losses")
    axes[2].plot(record["steps"], record["correlation"], ".-", label="cosine of the two groups' loss changes")
    axes[2].axhline(-0.8, color="r", linestyle=":", linewidth=1)
    for event in record["events"]:
        axes[2].axvline(event["step"], color="r", alpha=0.3)
    axes[2].legend(fontsize=8)
    axes[2].set_xlabel("GD step")
    fig.tight_layout()
    return fig


def logistic_figure(records):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, r in enumerate(records):
        ax.plot(r["record_steps"], [max(v, 1e-300) for v in r["losses"]], color=f"C{i}", label=f"lr {r['lr']:g}")
    ax.set_yscale("log")
    ax.set_xscale("symlog")
    ax.set_title("GD on separable logistic regression: training loss")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run_rows(runs):
    keys = ("model", "optimizer", "batch_size", "lr", "steps", "train_loss", "lambda_max", "trace", "lr_trace_over_2",
            "lr_trace_over_2B", "lr_lambda_over_2", "lr_mixture_over_2", "stayed", "norm", "test_error")
    return keys, [[r.get(k) for k in keys] for r in runs]


def section_rows(summary: Summary) -> dict:
    """The tables of every section (shared by the page and summary.md)."""
    adam = [[r["loss"], r["lr"], r["threshold"], r["reached_step"], r["checks_after"], r["fraction_within_band_after"],
             r["max_ratio"], r["hovers"]] for r in summary["adam_edge"]["runs"]]
    warm = [[w["lr"], w["warmup_steps"], w["max_ratio"], w["crossed_threshold"], w["unstable"], w["final_loss"]]
            for w in summary["warmup_curvature"]["lines"]]
    logistic = [[r["lr"], r["loss_increases"], r["max_loss"], r["zero_error_step"], r["final_loss"]]
                for r in summary["logistic"]["runs"]]
    bound = [[m, b["interpolating_sgd_runs"], b["max_lr_trace_over_2"], b["all_within"],
              "; ".join(f"B={k}: {_num(v['max_lr_trace_over_2'])} (/B: {_num(v.get('max_lr_trace_over_2B'))}, "
                        f"mixture {_num(v['max_mixture_ratio'])}, stayed {v.get('stayed', '-')}/{v.get('confirmed', '-')})"
                        for k, v in b["by_batch_size"].items())]
             for m, b in summary["sgd_stability"]["bound"].items()]
    trend = [[m, key, t["norm_tau"], t["norm_change"], t["test_error_tau"]]
             for m, per in summary["sgd_stability"]["trend"].items() for key, t in per.items()]
    return {
        "bound": (("model", "interpolating SGD runs", "max lr*trace/2", "all <= 1.1",
                   "max per batch size (lr*trace/(2B), mixture ratio, runs that stayed at the minimum)"), bound),
        "trend": (("model", "optimizer", "Kendall tau(norm, lr)", "norm change, smallest to largest lr",
                   "Kendall tau(test error, lr)"), trend),
        "adam": (("loss", "lr", "38/lr", "first reached (step)", "checks after", "within 15%", "max ratio",
                  "hovers"), adam),
        "warmup": (("peak lr", "warm-up steps", "max ratio to 38/lr(t)", "crossed", "unstable", "final loss"), warm),
        "logistic": (("step size", "loss increases", "max loss", "first step with 0 errors", "final loss"), logistic),
    }


def write_page(path: str | Path, summary: Summary) -> dict[str, bytes]:
    """report.html; returns the figures' PNG bytes by name (the study saves them beside the page)."""
    config = summary["config"]
    pngs = {}
    page = Page("Dynamical stability: SGD's trace bound, Adam at the edge, opposing signals, warm-up, logistic GD",
                f"{'quick' if config['quick'] else 'full'} study, seed {config['seed']}, {summary['seconds']:.0f} s")
    tables = section_rows(summary)
    page.heading("1-2. SGD's stability bound at interpolation (Wu & Su 2023)")
    page.paragraph("Claim: a linearly stable SGD minimum has trace(H) <= 2/lr (GD: lambda_max <= 2/lr); larger lr "
                   "gives a lower norm and better generalisation on diagonal linear and two-layer ReLU networks.")
    pngs["stability"] = page.figure(stability_figure(summary["runs"]),
                                    "stability ratios, norm and test error against lr")
    page.table(*tables["bound"])
    page.table(*tables["trend"])
    page.table(*run_rows(summary["runs"]))
    page.heading("3. Full-batch Adam at the edge of stability (Cohen et al. 2022)")
    page.paragraph("Claim: the preconditioned sharpness lambda_max(P^-1 H) rises to (2 + 2 beta1) / ((1 - beta1) lr) "
                   "= 38/lr and hovers there.")
    pngs["adam_edge"] = page.figure(ratio_figure(summary["adam_edge"]["runs"], "preconditioned sharpness / (38/lr)",
                             lambda r: f"{r['loss']} lr {r['lr']:g}", band=config["adam_band"]), "Adam ratio")
    page.table(*tables["adam"])
    opp = summary["opposing_signals"]
    page.heading("4. Opposing signals (Rosenfeld & Risteski 2023)")
    page.paragraph(f"GD lr {opp['lr']:g}; detector events at steps {[e['step'] for e in opp['events']]}; loss spikes "
                   f"(> 1.2 x running minimum) at checks {opp['loss_spikes']}.")
    pngs["opposing_signals"] = page.figure(opposing_figure(opp), "opposing signals")
    page.heading("5. Warm-up against curvature (Gilmer et al. 2022)")
    pngs["warmup"] = page.figure(ratio_figure(summary["warmup_curvature"]["runs"],
                                              "preconditioned sharpness / (38/lr(t)), first steps",
                             lambda r: f"lr {r['lr']:g} warm-up {r['warmup_steps']}", x_key="check_steps", log=True),
                                 "warm-up")
    page.table(*tables["warmup"])
    page.paragraph(f"'crossed 38/lr(t)' agrees with 'unstable or >5% worse than the best warm-up at that lr' in "
                   f"{_num(summary['warmup_curvature']['prediction_agreement'])} of runs.")
    page.heading("6. Large step sizes on separable logistic regression (Wu et al. 2024)")
    pngs["logistic"] = page.figure(logistic_figure(summary["logistic"]["runs"]), "logistic loss")
    page.table(*tables["logistic"])
    page.write(path)
    return pngs


def summary_markdown(summary: Summary) -> str:
    lines = ["# sgd-stability summary", ""]
    tables = section_rows(summary)
    for title, key in (("SGD bound", "bound"), ("Norm trend", "trend"), ("Adam edge of stability", "adam"),
                       ("Warm-up", "warmup"), ("Logistic GD", "logistic")):
        header, rows = tables[key]
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_num(v) for v in row) + " |" for row in rows]
        lines.append("")
    header, rows = run_rows(summary["runs"])
    lines += ["## Runs", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_num(v) for v in row) + " |" for row in rows]
    opp = summary["opposing_signals"]
    lines += ["", "## Opposing signals", "", f"detector events at steps {[e['step'] for e in opp['events']]}; "
              f"loss spikes at checks {opp['loss_spikes']}", ""]
    return "\n".join(lines)
