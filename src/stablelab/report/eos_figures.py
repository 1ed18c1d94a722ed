"""Figure and page of the edge-of-stability study (`stablelab eos`), from plain records: one dict per
gradient-descent run (loss, lr, steps, sharpness, train_loss, gd_threshold and the hover statistics)
and one per SGD-versus-GD comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from stablelab.report.html import Page

Record = Mapping[str, Any]


def sharpness_figure(runs: Sequence[Record]):
    """Per loss (columns): sharpness with 2/lr dashed (top) and the training loss (bottom), per lr."""
    import matplotlib.pyplot as plt

    losses = list(dict.fromkeys(r["loss"] for r in runs))
    fig, axes = plt.subplots(2, len(losses), figsize=(5.5 * len(losses), 6.5), squeeze=False, sharex="col")
    for column, name in enumerate(losses):
        top, bottom = axes[0][column], axes[1][column]
        for i, run in enumerate(r for r in runs if r["loss"] == name):
            color = f"C{i}"
            top.plot(run["steps"], run["sharpness"], color=color, label=f"lr {run['lr']:g}")
            top.axhline(run["gd_threshold"], color=color, linestyle="--", linewidth=1)
            bottom.plot(run["steps"], run["train_loss"], color=color, label=f"lr {run['lr']:g}")
        top.set_title(f"{name}: sharpness (solid) and 2/lr (dashed)")
        top.set_ylabel("top Hessian eigenvalue")
        top.legend()
        bottom.set_yscale("log")
        bottom.set_ylabel("train loss")
        bottom.set_xlabel("gradient descent step")
    fig.tight_layout()
    return fig


def write_page(path: str | Path, subtitle: str, runs: Sequence[Record], sgd: Sequence[Record], band: float,
               trace_products: int) -> bytes:
    """report.html: findings, the sharpness figure, the GD and SGD tables. Returns the figure's PNG.

    band: the relative distance to 2/lr counted as "at the edge"; trace_products: Hutch++ products."""
    page = Page("Edge of stability: sharpness against 2/lr", subtitle)
    page.heading("Findings")
    lines, warn = [], []
    for r in runs:
        if r["diverged"]:
            lines.append(f"{r['loss']} lr {r['lr']:g}: diverged")
        elif r["reached_step"] is None:
            lines.append(f"{r['loss']} lr {r['lr']:g}: sharpness stayed below {1 - band:.0%} of 2/lr "
                         f"(max {max(r['sharpness']):.3g} vs 2/lr = {r['gd_threshold']:.3g})")
        else:
            lines.append(
                f"{r['loss']} lr {r['lr']:g}: sharpness {r['sharpness'][0]:.3g} -> reaches "
                f"{1 - band:.0%} of 2/lr = {r['gd_threshold']:.3g} at step {r['reached_step']}, then median "
                f"{r['median_ratio_after']:.3f} x 2/lr, {r['fraction_within_band_after']:.0%} of checks within "
                f"{band:.0%}" + (" (hovers: edge of stability)" if r["hovers"] else ""))
        warn.append(not r["hovers"])
    for s in sgd:
        lines.append(f"SGD lr {s['lr']:g} batch {s['batch_size']}: trace(H) = {s['sgd']['trace']:.3g} = "
                     f"{s['sgd']['trace_ratio']:.2f} x 2/lr (Wu & Su: <= 1 at a linearly stable minimum); "
                     f"lambda_max {s['sgd']['sharpness_ratio']:.2f} x 2/lr; full-batch GD: trace "
                     f"{s['gd']['trace']:.3g}, lambda_max {s['gd']['lambda_max']:.3g} = "
                     f"{s['gd']['sharpness_ratio']:.2f} x 2/lr")
        warn.append(False)  # not a verdict: the bound holds at minima, see the note below
    page.findings(lines, warn)
    png = page.figure(sharpness_figure(runs), "sharpness against 2/lr over training")
    page.heading("Gradient descent runs")
    page.table(
        ["loss", "lr", "2/lr", "initial sharpness", "reached at step", "median ratio after", "within band",
         "max ratio after", "final loss", "train acc", "test acc", "HVPs", "seconds"],
        [[r["loss"], r["lr"], r["gd_threshold"], r["sharpness"][0], r["reached_step"], r["median_ratio_after"],
          r["fraction_within_band_after"], r["max_ratio_after"], r["train_loss"][-1], r["train_accuracy"],
          r["test_accuracy"], r["products"], r["seconds"]] for r in runs])
    page.heading("SGD: trace(H) at the end against 2/lr")
    page.table(["lr", "batch", "steps", "2/lr", "SGD trace", "SGD trace / (2/lr)", "SGD lambda_max",
                "GD trace", "GD lambda_max / (2/lr)", "SGD loss", "GD loss"],
               [[s["lr"], s["batch_size"], s["steps"], s["gd_threshold"], s["sgd"]["trace"], s["sgd"]["trace_ratio"],
                 s["sgd"]["lambda_max"], s["gd"]["trace"], s["gd"]["sharpness_ratio"], s["sgd"]["train_loss"],
                 s["gd"]["train_loss"]] for s in sgd])
    page.paragraph(f"Trace by Hutch++ with {trace_products} Hessian-vector products on the full training "
                   "set. Wu & Su's trace(H) <= 2/lr is a statement about linearly stable global minima (an "
                   "interpolating model, batch 1 in its simplest form); this small MLP does not interpolate "
                   "the MSE targets, so compare SGD's trace with GD's at the same LR rather than read the "
                   "ratio as pass/fail. Cross-entropy runs: as the loss goes to 0 the sharpness falls (Cohen et al. 2021 "
                   "note this late-training decline for cross-entropy), so hovering is expected only for MSE.",
                   "meta")
    page.write(path)
    return png
