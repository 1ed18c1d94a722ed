"""Figures of the grok study (`stablelab grok`), from plain rows: {variant: [row, ...]} with the
keys the study logs (step, train_acc, test_acc, softmax_collapse, zero_loss_fraction,
nlm_alignment/output.weight, logit_max_abs, weight_norm)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from stablelab.report.html import Page

Rows = Mapping[str, Sequence[Mapping[str, Any]]]


def write_page(path: str | Path, subtitle: str, results: Mapping[str, tuple[Mapping[str, Any], Rows]],
               labels: Mapping[str, str], stablemax: set[str], target: float, loss_dtype: str,
               reproduce: str) -> Path:
    """report.html of the study: findings, the result table and the three figures.

    results: {variant: (result, rows)} as the study returns them; stablemax: the variants trained
    with StableMax; target: the test accuracy counted as grokked; loss_dtype: the loss's precision."""
    page = Page("Softmax collapse and grokking", subtitle)
    page.heading("Findings")
    lines, warn = [], []
    for variant, (result, _) in results.items():
        reached = result["steps_to_95_test"]
        when = f"reached 95% test accuracy at step {reached}" if reached is not None else \
            f"never reached 95% test accuracy within {result['steps']} steps"
        lines.append(f"{labels[variant]}: {when}; final train {result['final_train_acc']:.1%}, "
                     f"test {result['final_test_acc']:.1%}; collapse of its normaliser up to "
                     f"{result['max_softmax_collapse']:.1%} of training samples (softmax collapse of its "
                     f"logits up to {result['max_softmax_collapse_of_logits']:.1%}).")
        warn.append(reached is None)
    page.findings(lines, warn)
    page.table(
        ["variant", "final train acc", "final test acc", "steps to 95% test", "max collapse (own normaliser)",
         "max softmax collapse of logits", "max zero-loss fraction", "cos(grad, w) output layer (last)",
         "seconds"],
        [[v, r["final_train_acc"], r["final_test_acc"],
          r["steps_to_95_test"] if r["steps_to_95_test"] is not None else f"never within {r['steps']}",
          r["max_softmax_collapse"], r["max_softmax_collapse_of_logits"], r["max_zero_loss_fraction"],
          r["final_nlm_alignment_output"],
          r["seconds"]] for v, (r, _) in results.items()])

    curves = {variant: rows for variant, (_, rows) in results.items()}
    page.heading("Accuracy")
    page.figure(accuracy_figure(curves, labels, target), "train and test accuracy per variant")
    page.heading("Softmax collapse and naive loss minimisation")
    page.paragraph("Collapse: for the softmax runs, the fraction of training samples whose sum of "
                   f"exp(logit - max) is exactly 1 in {loss_dtype} (for the StableMax run: of its "
                   "logits, dotted, although it never takes their softmax; its own collapse is a StableMax "
                   "loss of exactly 0). Zero loss: fraction of training samples whose own loss "
                   "is exactly 0. NLM alignment: cos(grad, w) of the output layer; under naive loss "
                   "minimisation the gradient points against the weights, so it falls towards -1.")
    page.figure(collapse_figure(curves, labels, stablemax),
                "softmax collapse, zero-loss fraction and NLM alignment per variant")
    page.heading("Logit and weight scale")
    page.figure(scale_figure(curves, labels), "logit and weight scale per variant")
    page.paragraph("Reproduce: " + reproduce, css_class="meta")
    return page.write(path)


def accuracy_figure(curves: Rows, labels: Mapping[str, str], target: float):
    """Train and test accuracy per variant, the target accuracy dashed."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for variant, rows in curves.items():
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r["train_acc"] for r in rows], label=labels[variant])
        axes[1].plot(steps, [r["test_acc"] for r in rows], label=labels[variant])
    for ax, title in zip(axes, ("train accuracy", "test accuracy")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.axhline(target, color="0.7", lw=0.8, ls="--")
    axes[1].legend(fontsize=8)
    return fig


def collapse_figure(curves: Rows, labels: Mapping[str, str], stablemax: set[str]):
    """Collapse of the normaliser each variant trains with (for the `stablemax` variants: their
    zero-loss fraction, and the softmax of their logits dotted), zero-loss fraction, cos(grad, w)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for variant, rows in curves.items():
        steps = [r["step"] for r in rows]
        if variant in stablemax:
            line, = axes[0].plot(steps, [r["zero_loss_fraction"] for r in rows], label=labels[variant])
            axes[0].plot(steps, [r["softmax_collapse"] for r in rows], ls=":", color=line.get_color(),
                         label="softmax of the StableMax logits (not used in training)")
        else:
            axes[0].plot(steps, [r["softmax_collapse"] for r in rows], label=labels[variant])
        axes[1].plot(steps, [r["zero_loss_fraction"] for r in rows], label=labels[variant])
        nlm = [(r["step"], r.get("nlm_alignment/output.weight")) for r in rows]
        nlm = [(s, c) for s, c in nlm if c is not None]
        axes[2].plot([s for s, _ in nlm], [c for _, c in nlm], label=labels[variant])
    axes[0].legend(fontsize=7)
    for ax, title in zip(axes, ("collapse of the normaliser trained with", "zero-loss fraction",
                                "cos(grad, w), output layer")):
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[2].legend(fontsize=8)
    return fig


def scale_figure(curves: Rows, labels: Mapping[str, str]):
    """Max |logit| on the training set (log scale) and the weight norm per variant."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for variant, rows in curves.items():
        steps = [r["step"] for r in rows]
        axes[0].semilogy(steps, [max(r["logit_max_abs"], 1e-12) for r in rows], label=labels[variant])
        axes[1].plot(steps, [r["weight_norm"] for r in rows], label=labels[variant])
    axes[0].set_title("max |logit| on the training set")
    axes[1].set_title("weight norm")
    for ax in axes:
        ax.set_xlabel("step")
    axes[1].legend(fontsize=8)
    return fig
