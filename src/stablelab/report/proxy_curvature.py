"""The proxy report's curvature sections: warm-up against preconditioned sharpness (Gilmer et al.
2022) and gradient RMS against AdamW eps per layer and width (Wortsman et al. 2023, 3.4). Both read
`summary["warmup_curvature"]` / `summary["grad_rms"]` (analysis.proxy_curvature)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt


def _g(x) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)) and math.isfinite(x):
        return f"{x:.3g}"
    return "-"


def warmup_figure(curvature: dict):
    """Max preconditioned sharpness / (38/lr(t)) over the checked steps against warm-up fraction, one
    line per variant, scale and LR."""
    lines = curvature["lines"]
    groups = sorted({(x["variant"], x["width"], x["depth"]) for x in lines})
    fig, axes = plt.subplots(1, len(groups), figsize=(4.4 * len(groups), 3.4), squeeze=False)
    for ax, (variant, width, depth) in zip(axes[0], groups):
        mine = [x for x in lines if (x["variant"], x["width"], x["depth"]) == (variant, width, depth)]
        for i, lr in enumerate(sorted({x["lr"] for x in mine})):
            pts = sorted((x["warmup_fraction"], x["max_ratio"], x["unstable"]) for x in mine if x["lr"] == lr)
            xs = [p[0] for p in pts]
            ax.plot(xs, [p[1] for p in pts], "o-", color=f"C{i}", label=f"lr {lr:g}")
            for wu, ratio, unstable in pts:
                if unstable:
                    ax.plot([wu], [ratio], "x", color="k", markersize=9)
        ax.axhline(1.0, color="r", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_xscale("symlog", linthresh=0.01)
        longest = max((x["warmup_fraction"] for x in mine), default=0.0)
        ax.set_xlim(0, 1.4 * longest if longest > 0 else 1.0)  # warm-up 0 at the left edge
        ax.set_xlabel("warm-up fraction of the steps")
        ax.set_ylabel("max sharpness / (38/lr(t))")
        ax.set_title(f"{variant} w{width} d{depth}", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("Adam-preconditioned sharpness in the first steps (x: unstable run; red: 38/lr)", fontsize=10)
    fig.tight_layout()
    return fig


def grad_rms_figure(grad_rms: dict):
    """One panel per eps: median gradient RMS per weight matrix against width, eps dashed."""
    runs = grad_rms["runs"]
    epses = sorted({r["eps"] for r in runs})
    fig, axes = plt.subplots(1, len(epses), figsize=(4.8 * len(epses), 3.6), squeeze=False)
    for ax, eps in zip(axes[0], epses):
        mine = sorted((r for r in runs if r["eps"] == eps), key=lambda r: r["width"])
        layers = list(dict.fromkeys(name for r in mine for name in r["grad_rms"]))
        for i, name in enumerate(layers):
            pts = [(r["width"], r["grad_rms"][name]) for r in mine if name in r["grad_rms"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=plt.cm.viridis(i / max(1, len(layers) - 1)),
                    label=name.removesuffix(".weight"), linewidth=1)
        ax.axhline(eps, color="r", linestyle="--", linewidth=1, label=f"eps {eps:g}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width")
        ax.set_ylabel("gradient RMS (median, 2nd half)")
        ax.set_title(f"AdamW eps {eps:g}, lr {grad_rms['lr']:g}", fontsize=10)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def curvature_sections(page, summary: dict, add) -> None:
    """Add the two sections when their data exist; `add(name, fig, alt, text)` writes a figure."""
    curvature = summary.get("warmup_curvature")
    if curvature:
        page.heading("Warm-up against curvature")
        add("warmup_curvature", warmup_figure(curvature), "max preconditioned sharpness against warm-up",
            "Adam's preconditioned sharpness (Lanczos on a fixed batch, Adam's own state) over its stability "
            "threshold 38/lr(t) at the checked steps of the first part of training (Gilmer et al. 2022: warm-up "
            "keeps early training out of high curvature). 'Unstable': diverged, or final loss more than 5% "
            f"above the best warm-up at the same point. Crossed 38/lr(t) agrees with unstable in "
            f"{curvature['agreement']:.0%} of runs; longer warm-up gave lower or equal sharpness at "
            f"{curvature['longer_warmup_lowers_sharpness']} points.")
        page.table(["variant", "width", "depth", "lr", "warm-up", "checks", "max ratio", "crossed", "diverged",
                    "final loss", "unstable"],
                   [[x["variant"], x["width"], x["depth"], _g(x["lr"]), _g(x["warmup_fraction"]), x["checks"],
                     _g(x["max_ratio"]), _g(x["crossed"]), _g(x["diverged"]), _g(x["final_loss"]), _g(x["unstable"])]
                    for x in curvature["lines"]])
    grad_rms = summary.get("grad_rms")
    if grad_rms and grad_rms.get("runs"):
        page.heading("Gradient RMS against AdamW eps")
        add("grad_rms_vs_eps", grad_rms_figure(grad_rms), "gradient RMS per layer against width and eps",
            f"Per weight matrix, the median gradient RMS ||g|| / sqrt(numel) over the second half of training, "
            f"against width, for {grad_rms['runs'][0]['variant']} at lr {grad_rms['lr']:g} (the grid's LR nearest "
            "1e-2). Where it approaches eps (red), AdamW's update m / (sqrt(v) + eps) shrinks: the eps floor of "
            "Wortsman et al. 2023, section 3.4.")
