"""Figures, page and Markdown summary of the low-bit study (`stablelab lowbit`), from its summary and records."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from stablelab.report.html import Page

Record = Mapping[str, Any]


def _f(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def findings(summary: Mapping) -> list[str]:
    """One line per claim the study checks, in the papers' words, with what was measured."""
    lines = []
    binary = summary.get("binary")
    if binary and binary.get("reste_vs_ste"):
        v = binary["reste_vs_ste"]
        verdict = {True: f"beyond the seed spread ({v['seed_spread'] * 100:.1f} points)",
                   False: f"within the seed spread ({v['seed_spread'] * 100:.1f} points)",
                   None: "one seed, so no spread to compare with"}[v["beyond_seed_spread"]]
        lines.append(f"ReSTE (Wu et al. 2023) claims its middle ground beats STE: best ReSTE o = {v['best_o']:g} is "
                     f"{v['difference'] * 100:+.1f} points of test accuracy against STE, {verdict}.")
    states = summary.get("states8bit")
    if states:
        b = states["bytes_per_param"]
        lines.append(f"8-bit states: {b['8bit']:.3f} bytes per parameter for AdamW's two moments against "
                     f"{b['fp32']:.1f} in float32 (AdEMAMix's three: {b.get('ademamix8bit', float('nan')):.3f}).")
        rows = states["comparison"]
        if rows:
            within = [r["within_seed_noise"] for r in rows]
            worst = max(abs(r["difference"]) for r in rows)
            known = [w for w in within if w is not None]
            verdict = (f"{sum(known)} of {len(known)} LRs within seed noise" if known
                       else "one seed: no noise estimate")
            lines.append(f"8-bit AdamW vs fp32 AdamW (Dettmers et al. 2022 claim: matches): largest final-loss "
                         f"difference {worst:.3g}; {verdict}.")
        sweep = {r["optimizer"]: r for r in states["sweep"]}
        if "adamw" in sweep and "adamw8bit" in sweep:
            lines.append(f"LR sensitivity: fp32 states {sweep['adamw']['lr_sensitivity']:.3g}, 8-bit states "
                         f"{sweep['adamw8bit']['lr_sensitivity']:.3g}.")
    int4 = summary.get("int4")
    if int4:
        precision = int4["precision"]
        table = {(r["optimizer"], r["precision"]): r for r in int4["sweep"]}
        for optimizer in dict.fromkeys(r["optimizer"] for r in int4["sweep"]):
            full, low = table.get((optimizer, "fp32")), table.get((optimizer, precision))
            if full and low:
                lines.append(f"{optimizer}: LR sensitivity fp32 {full['lr_sensitivity']:.3g} -> {precision} "
                             f"{low['lr_sensitivity']:.3g}; gradient-norm spread {full['grad_norm_spread']:.3g} -> "
                             f"{low['grad_norm_spread']:.3g} (Huang et al. 2025 claim: low precision amplifies LR "
                             f"sensitivity, Stable-SPAM stabilises it).")
    return lines


def _binary_figure(table: Sequence[Mapping]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    reste = [r for r in table if r["estimator"] == "reste"]
    ste = [r for r in table if r["estimator"] == "ste"]
    for ax, key, label in zip(axes, ("test_acc_mean", "estimating_error", "gradient_stability"),
                              ("test accuracy", "estimating error", "gradient stability (Var |g|)")):
        ax.plot([r["o"] for r in reste], [r[key] for r in reste], "o-", label="ReSTE")
        for r in ste:
            ax.axhline(r[key], color="C1", linestyle="--", label="STE")
        ax.set_xlabel("o (final)")
        ax.set_title(label)
        ax.legend()
    fig.tight_layout()
    return fig


def _sweep_figure(runs: Sequence[Record], title: str):
    """Final loss against LR per (optimizer, precision), seed means; and the loss curves at each LR."""
    import matplotlib.pyplot as plt
    import numpy as np

    keys = list(dict.fromkeys((r["optimizer"], r["precision"]) for r in runs))
    lrs = sorted({r["lr"] for r in runs})
    fig, axes = plt.subplots(1, 1 + len(lrs), figsize=(4.2 * (1 + len(lrs)), 3.6), squeeze=False)
    for i, key in enumerate(keys):
        style = "--" if key[1] != "fp32" else "-"
        color = f"C{list(dict.fromkeys(k[0] for k in keys)).index(key[0])}"
        finals = [np.nanmean([r["final_loss"] for r in runs if (r["optimizer"], r["precision"], r["lr"]) == (*key, lr)]
                             or [np.nan]) for lr in lrs]
        axes[0][0].plot(lrs, finals, style, marker="o", color=color, label=f"{key[0]} {key[1]}")
        for j, lr in enumerate(lrs):
            for r in (r for r in runs if (r["optimizer"], r["precision"], r["lr"]) == (*key, lr)):
                losses = [np.nan if v is None else v for v in r["losses"]]
                axes[0][j + 1].plot(r["steps"], losses, style, color=color, alpha=0.8,
                                    label=f"{key[0]} {key[1]}" if r["seed"] == runs[0]["seed"] else None)
            axes[0][j + 1].set_title(f"lr {lr:g}: train loss")
            axes[0][j + 1].set_xlabel("step")
    axes[0][0].set_xscale("log")
    axes[0][0].set_xlabel("peak LR")
    axes[0][0].set_ylabel("final validation loss")
    axes[0][0].set_title(title)
    axes[0][0].legend(fontsize=7)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _sweep_rows(sweep: Sequence[Mapping]) -> list[list]:
    return [[r["optimizer"], r["precision"], r["lr_sensitivity"], r["best_lr"], r["best_loss"],
             ", ".join(_f(v, 3) for v in r["final_losses"]), r.get("seed_spread"), r["grad_norm_spread"],
             f"{r['reached_reference']}/{r['runs']}", r["steps_to_reference"], r["diverged"]] for r in sweep]


SWEEP_HEADER = ["optimizer", "precision", "LR sensitivity", "best LR", "best loss", "final loss per LR",
                "seed spread (mean over LRs)", "grad-norm spread (CV)", "reached fp32 AdamW loss", "mean steps to it", "diverged"]


def write_page(path: str | Path, summary: Mapping, results: Mapping[str, Sequence[Record]]) -> Path:
    """report.html: findings, then one section per study part with its figure and tables."""
    s = summary["settings"]
    page = Page("Low-bit training: binary estimators, 8-bit states, 4-bit training",
                f"{'quick' if s['quick'] else 'full'} study, {summary['wall_seconds']:.0f} s on {summary['device']}; "
                f"transformer width {s['width']}, depth {s['depth']}, {s['steps']} steps (proxy recipe).")
    page.heading("Findings")
    page.findings(findings(summary))
    if "binary" in summary:
        b = summary["binary"]
        page.heading("Binary MLP on digits: STE vs ReSTE")
        page.paragraph(f"64 -> {b['hidden']} -> 2 binary layers (1W1A) -> 10, Adam lr {b['lr']:g}, {b['epochs']} epochs, "
                       "o annealed 1 -> o per epoch (official schedule). Estimating error: sum over binary layers of "
                       "||sign(w)|w|^(1/o) - sign(w)|| at the end; gradient stability: mean over steps of "
                       "sum_l Var(|grad w_l|).")
        page.figure(_binary_figure(b["table"]), "binary estimators")
        page.table(["estimator", "o", "seeds", "test acc (mean)", "spread", "estimating error", "gradient stability"],
                   [[r["estimator"], r["o"], r["seeds"], r["test_acc_mean"], r["test_acc_spread"],
                     r["estimating_error"], r["gradient_stability"]] for r in b["table"]])
    if "states8bit" in summary:
        st = summary["states8bit"]
        page.heading("AdamW with float32 vs 8-bit states")
        page.table(["state", "bytes per parameter"], [[k, v] for k, v in st["bytes_per_param"].items()])
        if results.get("states8bit"):
            page.figure(_sweep_figure(results["states8bit"], "AdamW: fp32 vs 8-bit states"), "8-bit states")
        page.table(["LR", "fp32 loss", "8-bit loss", "difference", "seed noise", "curve gap", "seeds",
                    "within seed noise"],
                   [[r["lr"], r["fp32_loss"], r["8bit_loss"], r["difference"], r["seed_noise"], r["curve_gap"],
                     r["seeds"], r["within_seed_noise"]] for r in st["comparison"]])
        page.table(SWEEP_HEADER, _sweep_rows(st["sweep"]))
    if "int4" in summary:
        q = summary["int4"]
        page.heading(f"AdamW, SPAM, Stable-SPAM at fp32 and {q['precision']}")
        page.paragraph(f"{q['precision']}: weights {q['weight_bits']} bits, activations {q['activation_bits']} bits, "
                       f"groups of {q['group_size']} (nn.quantize_model, straight-through backward, output head in "
                       "full precision). Solid: fp32, dashed: quantised.")
        page.figure(_sweep_figure(results["int4"], f"fp32 vs {q['precision']}"), "int4 sweep")
        page.table(SWEEP_HEADER, _sweep_rows(q["sweep"]))
    return page.write(path)


def _md_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_markdown(summary: Mapping) -> str:
    """summary.md: the findings and the tables (the same numbers as summary.json)."""
    parts = ["# stablelab lowbit", "", *[f"- {line}" for line in findings(summary)], ""]
    if "binary" in summary:
        parts += ["## Binary MLP on digits", "", _md_table(
            ["estimator", "o", "seeds", "test acc", "spread", "estimating error", "gradient stability"],
            [[r["estimator"], r["o"], r["seeds"], r["test_acc_mean"], r["test_acc_spread"], r["estimating_error"],
              r["gradient_stability"]] for r in summary["binary"]["table"]]), ""]
    if "states8bit" in summary:
        st = summary["states8bit"]
        parts += ["## 8-bit states", "", _md_table(["state", "bytes/param"], list(st["bytes_per_param"].items())), "",
                  _md_table(["LR", "fp32 loss", "8-bit loss", "difference", "seed noise", "curve gap",
                             "within seed noise"],
                            [[r["lr"], r["fp32_loss"], r["8bit_loss"], r["difference"], r["seed_noise"],
                              r["curve_gap"], r["within_seed_noise"]] for r in st["comparison"]]), "",
                  _md_table(SWEEP_HEADER, _sweep_rows(st["sweep"])), ""]
    if "int4" in summary:
        parts += [f"## fp32 vs {summary['int4']['precision']}", "",
                  _md_table(SWEEP_HEADER, _sweep_rows(summary["int4"]["sweep"])), ""]
    return "\n".join(parts)
