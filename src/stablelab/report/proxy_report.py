"""The proxy study's report: figures, report.html, summary.md and summary.json (rendering only)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from stablelab.report.html import Page
from stablelab.report.proxy_curvature import curvature_sections
from stablelab.report.proxy_outcomes import outcome_markdown, outcome_sections
from stablelab.io import atomic_write_bytes, atomic_write_json

FIGURES = "figures"


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _panels(n: int, height: float = 3.2):
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, height * rows), squeeze=False, sharey=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _series(points, group_keys):
    """{group label: (variant, sorted points)} with one curve per scale."""
    curves = {}
    for p in points:
        curves.setdefault(tuple(p[k] for k in group_keys), []).append(p)
    return {k: sorted(v, key=lambda p: p["lr"]) for k, v in curves.items()}


def _key(p):
    """(optimizer, variant and its extra-axis values): one panel or bar group each."""
    return p["optimizer"], p["variant"] + (f" {p['setting']}" if p.get("setting") else "")


def _panel_keys(points):
    return list(dict.fromkeys(_key(p) for p in points))


def _label(panel, multi_opt):
    return f"{panel[0]} / {panel[1]}" if multi_opt else panel[1]


def _scale_label(p, multi_depth):
    return f"w{p['width']} d{p['depth']}" if multi_depth else f"width {p['width']}"


def lr_vs_loss_figure(points, title_suffix=""):
    panels = _panel_keys(points)
    multi_opt = len({p[0] for p in panels}) > 1
    multi_depth = len({p["depth"] for p in points}) > 1
    fig, axes = _panels(len(panels))
    cmap = plt.get_cmap("viridis")
    scales = sorted({(p["width"], p["depth"]) for p in points})
    init = np.nanmean([p["init_loss"] for p in points])
    for ax, panel in zip(axes, panels):
        for i, scale in enumerate(scales):
            curve = sorted((p for p in points if _key(p) == panel
                            and (p["width"], p["depth"]) == scale), key=lambda p: p["lr"])
            if not curve:
                continue
            color = cmap(i / max(1, len(scales) - 1) * 0.85)
            xs = [p["lr"] for p in curve]
            ys = [p["final_loss"] if _finite(p["final_loss"]) else init for p in curve]
            ax.plot(xs, ys, "o-", color=color, label=_scale_label(curve[0], multi_depth))
            bad = [(x, y) for x, y, p in zip(xs, ys, curve) if p["diverged"]]
            if bad:
                ax.scatter(*zip(*bad), marker="x", s=80, color="red", zorder=5)
        ax.axhline(init, color="gray", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(_label(panel, multi_opt))
        ax.set_xlabel("peak learning rate")
        ax.grid(alpha=0.3)
    plotted = [p["final_loss"] for p in points if _finite(p["final_loss"]) and not p["diverged"]]
    if plotted and not any(p["diverged"] for p in points):  # zoom on the curves; init is far above
        low, high = min(plotted), max(plotted)
        axes[0].set_ylim(low - 0.05 * (high - low + 0.1), high + 0.1 * (high - low + 0.1))
        note = f"no run diverged; loss at initialisation {init:.2f}"
    else:
        note = f"red x: diverged (plotted at the loss at initialisation {init:.2f}, dashed)"
    axes[0].set_ylabel("final validation loss")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"LR vs final loss ({note})" + title_suffix)
    fig.tight_layout()
    return fig


def heatmap_figure(points):
    panels = _panel_keys(points)
    multi_opt = len({p[0] for p in panels}) > 1
    lrs = sorted({p["lr"] for p in points})
    scales = sorted({(p["width"], p["depth"]) for p in points})
    multi_depth = len({s[1] for s in scales}) > 1
    fig, axes = _panels(len(panels), height=0.5 * len(scales) + 1.8)
    finite = [p["final_loss"] for p in points if _finite(p["final_loss"])]
    vmin, vmax = (min(finite), max(finite)) if finite else (0, 1)
    for ax, panel in zip(axes, panels):
        grid = np.full((len(scales), len(lrs)), np.nan)
        for p in points:
            if _key(p) != panel:
                continue
            i, j = scales.index((p["width"], p["depth"])), lrs.index(p["lr"])
            grid[i, j] = p["final_loss"] if _finite(p["final_loss"]) else np.nan
            light = _finite(p["final_loss"]) and (p["final_loss"] - vmin) < 0.5 * (vmax - vmin)
            ax.text(j, i, "DIV" if p["diverged"] else f"{p['final_loss']:.2f}", ha="center", va="center",
                    fontsize=7, fontweight="bold",
                    color="red" if p["diverged"] else ("black" if light else "white"))
        ax.imshow(grid, aspect="auto", cmap="magma_r", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs], rotation=45, fontsize=7)
        ax.set_yticks(range(len(scales)), [f"w{w}" + (f" d{d}" if multi_depth else "") for w, d in scales])
        ax.set_title(_label(panel, multi_opt))
    fig.suptitle("Final loss over LR x scale (DIV: diverged)")
    fig.tight_layout()
    return fig


def metric_vs_lr_figure(points, key, ylabel, title, log_y=True, hline=None, hline_label=None):
    panels = _panel_keys(points)
    multi_opt = len({p[0] for p in panels}) > 1
    multi_depth = len({p["depth"] for p in points}) > 1
    scales = sorted({(p["width"], p["depth"]) for p in points})
    cmap = plt.get_cmap("viridis")
    fig, axes = _panels(len(panels))
    for ax, panel in zip(axes, panels):
        for i, scale in enumerate(scales):
            curve = sorted((p for p in points if _key(p) == panel
                            and (p["width"], p["depth"]) == scale and _finite(p[key])), key=lambda p: p["lr"])
            if curve:
                ax.plot([p["lr"] for p in curve], [abs(p[key]) if log_y else p[key] for p in curve], "o-",
                        color=cmap(i / max(1, len(scales) - 1) * 0.85), label=_scale_label(curve[0], multi_depth))
        if hline is not None:
            ax.axhline(hline, color="red", ls="--", lw=0.8, label=hline_label)
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_title(_label(panel, multi_opt))
        ax.set_xlabel("peak learning rate")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def sensitivity_figure(scales):
    entries = list(scales.values())
    variants = list(dict.fromkeys(_key(e) for e in entries))
    multi_opt = len({v[0] for v in variants}) > 1
    scale_keys = sorted({(e["width"], e["depth"]) for e in entries})
    multi_depth = len({s[1] for s in scale_keys}) > 1
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(variants) * len(scale_keys) / 3 + 4), 3.6))
    width = 0.8 / len(scale_keys)
    cmap = plt.get_cmap("viridis")
    for i, scale in enumerate(scale_keys):
        values = [next((e["lr_sensitivity"] for e in entries if _key(e) == v
                        and (e["width"], e["depth"]) == scale), np.nan) for v in variants]
        ax.bar(np.arange(len(variants)) + i * width, values, width,
               label=f"w{scale[0]}" + (f" d{scale[1]}" if multi_depth else ""),
               color=cmap(i / max(1, len(scale_keys) - 1) * 0.85))
    ax.set_xticks(np.arange(len(variants)) + 0.4 - width / 2, [_label(v, multi_opt) for v in variants])
    ax.set_ylabel("LR sensitivity (lower is better)")
    ax.set_title("LR sensitivity per variant and scale (Wortsman et al. 2023)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def prediction_figure(prediction):
    rows = [r for r in prediction["per_lr"] if r["observed"]]
    panels = list(dict.fromkeys((*_key(r), r["depth"]) for r in rows))
    fig, axes = _panels(max(1, len(panels)))
    lrs = sorted({r["lr"] for r in rows})
    cmap = plt.get_cmap("plasma")
    target = prediction["n_params"]
    for ax, panel in zip(axes, panels):
        for r in rows:
            if (*_key(r), r["depth"]) != panel:
                continue
            color = cmap(lrs.index(r["lr"]) / max(1, len(lrs) - 1) * 0.9)
            sizes = [r["observed_n_params"][w] for w in r["observed"]]
            values = [r["observed"][w] for w in r["observed"]]
            ok = [(s, v) for s, v in zip(sizes, values) if _finite(v) and v > 0]
            if ok:
                ax.plot(*zip(*ok), "o", color=color, label=f"lr {r['lr']:g}")
            if r["fit_coefficients"]:
                xs = np.logspace(math.log10(min(sizes)), math.log10(target), 40)
                ys = 10 ** np.polyval(r["fit_coefficients"], np.log10(xs))
                ax.plot(xs, ys, "-", color=color, lw=1)
                ax.plot([target], [r["predicted"]], "*", color=color, ms=12,
                        markeredgecolor="red" if r["predicted_unstable"] else "black")
        ax.axhline(prediction["threshold"], color="red", ls="--", lw=0.8)
        ax.axvline(target, color="gray", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{panel[1]}" + (f" d{panel[2]}" if len({p[2] for p in panels}) > 1 else ""))
        ax.set_xlabel("parameters")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"layer-0 max attention logit at step {prediction['step']}")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Prediction (paper 3.3): fit vs size per LR, extrapolated to width {prediction['width']} "
                 f"(star); red dashed: {prediction['threshold']:g}")
    fig.tight_layout()
    return fig


def summary_markdown(summary, findings, meta) -> str:
    lines = ["# Proxy study summary", "", meta.get("subtitle", ""), "", "## Findings", ""]
    lines += [f"- {f}" for f in findings]
    lines += ["", "## LR sensitivity (lower is better)", ""]
    entries = list(summary["scales"].values())
    scale_keys = sorted({(e["width"], e["depth"]) for e in entries})
    header = "| variant | " + " | ".join(f"w{w} d{d}" for w, d in scale_keys) + " |"
    lines += [header, "|" + "---|" * (len(scale_keys) + 1)]
    for v in dict.fromkeys(_key(e) for e in entries):
        cells = []
        for s in scale_keys:
            e = next((e for e in entries if _key(e) == v and (e["width"], e["depth"]) == s), None)
            cells.append("-" if e is None else f"{e['lr_sensitivity']:.3f}")
        name = v[1] if len({e["optimizer"] for e in entries}) == 1 else f"{v[0]}/{v[1]}"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    multi_opt = len({e["optimizer"] for e in entries}) > 1
    lines += ["", "## Best LR and largest stable LR", "",
              "| variant | scale | best lr | best loss | largest stable lr | diverges from |", "|---|---|---|---|---|---|"]
    for e in entries:
        fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
        name = f"{e['optimizer']}/{e['variant']}" if multi_opt else e["variant"]
        lines.append(f"| {name} | w{e['width']} d{e['depth']} | {fmt(e['best_lr'])} | "
                     f"{e['best_loss']:.3f} | {fmt(e['largest_stable_lr'])} | {fmt(e['diverges_from_lr'])} |")
    return "\n".join(lines + outcome_markdown(summary)) + "\n"


def add_contents(page: Page) -> None:
    """A table of contents at the top: every section heading gets an anchor and a link."""
    links = []
    for i, part in enumerate(page.parts):
        if part.startswith("<h2>"):
            anchor = f"s{len(links)}"
            page.parts[i] = part.replace("<h2>", f'<h2 id="{anchor}">', 1)
            links.append(f'<li><a href="#{anchor}">{part[4:-5]}</a></li>')
    page.parts.insert(0, '<nav><strong>Contents</strong><ul>' + "".join(links) + "</ul></nav>")


def write_proxy_report(out: str | Path, summary: dict, findings: list[str], meta: dict) -> dict:
    """Write figures/*.png, report.html, summary.md and summary.json under `out`."""
    out = Path(out)
    figures = out / FIGURES
    points = summary["points"]
    page = Page("stablelab proxy study", meta.get("subtitle", ""))
    page.heading("Findings")
    page.findings(findings)

    def add(name, fig, alt, text=None):
        if text:
            page.paragraph(text)
        atomic_write_bytes(figures / f"{name}.png", page.figure(fig, alt))

    page.heading("LR vs final loss")
    add("lr_vs_loss", lr_vs_loss_figure(points), "LR vs final loss",
        "Final validation loss against peak LR, one curve per scale, one panel per variant. "
        "Always read LR sensitivity beside these curves: a model that fails everywhere scores 0.")
    page.heading("LR x scale")
    add("heatmap", heatmap_figure(points), "heatmap of final loss over LR and scale")
    page.heading("Attention logit growth")
    add("attn_logit_vs_lr", metric_vs_lr_figure(
        points, "max_attn_logit", "max attention logit (over training)",
        "Max attention logit vs LR (paper 3.1; red dashed 1e4)", hline=1e4, hline_label="1e4"),
        "max attention logit vs LR")
    page.heading("Output logits")
    add("log_z_vs_lr", metric_vs_lr_figure(
        points, "final_log_z", "|mean log Z| at the end", "Output log Z vs LR (paper 3.2)"), "log Z vs LR")
    page.heading("LR sensitivity")
    add("lr_sensitivity", sensitivity_figure(summary["scales"]), "LR sensitivity bars")
    rows = [[_key(e)[1] if meta.get("single_optimizer", True) else "/".join(_key(e)),
             e["width"], e["depth"], e["lr_sensitivity"], e["best_lr"], e["best_loss"],
             e["largest_stable_lr"], e["diverges_from_lr"]] for e in summary["scales"].values()]
    page.table(["variant", "width", "depth", "LR sensitivity", "best lr", "best loss",
                "largest stable lr", "diverges from lr"], rows)
    page.heading("Prediction for a larger model")
    add("prediction", prediction_figure(summary["prediction"]), "attention logit prediction",
        f"Layer-0 max attention logit at step {summary['prediction']['step']} against parameter count, "
        f"fitted per LR in log-log space and extrapolated to width {summary['prediction']['width']} "
        f"({summary['prediction']['n_params'] / 1e6:.1f}M parameters).")
    page.table(["variant", "depth", "lr", "predicted logit", "above 1e4"],
               [[_key(r)[1], r["depth"], r["lr"], r["predicted"], "yes" if r["predicted_unstable"] else "no"]
                for r in summary["prediction"]["per_lr"]])
    outcome_sections(page, summary, add)
    curvature_sections(page, summary, add)
    page.heading("Runs")
    page.paragraph("Monitor events per run (stablelab.monitor, warn-only policy; details in each run's "
                   "events.jsonl, or `stablelab report OUT/runs/RUN_ID`).")
    page.table(["run", "final loss", "diverged", "max attn logit", "final log Z", "wall s", "monitor events"],
               [[r["run_id"], r["final_loss"], r["diverged"], r["max_attn_logit"], r["final_log_z"], r["wall_s"],
                 ", ".join(f"{k} x{n}" for k, n in sorted((r.get("events") or {}).items())) or "none"]
                for r in summary["runs"]])
    page.heading("Settings")
    page.preformatted("\n".join(f"{k}: {v}" for k, v in meta.get("settings", {}).items()))

    add_contents(page)
    report = page.write(out / "report.html")
    atomic_write_json(out / "summary.json", {**summary, "findings": findings, "meta": meta})
    atomic_write_bytes(out / "summary.md", summary_markdown(summary, findings, meta).encode())
    return {"report": report, "summary": out / "summary.json", "findings": findings}
