"""Figures and page of the stability-gap study (`stablelab gap`), from plain data: runs keyed by
(benchmark, learner, seed), each {"acc": (evaluations, tasks) array, "training_task", "iterations",
"metrics": {...}, "seconds", "eval_seconds"}."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stablelab.report.html import Page

METRIC_COLUMNS = [
    ("average_accuracy", "final avg ACC"),
    ("forgetting", "forgetting"),
    ("task_end_acc", "task-end ACC (earlier tasks)"),
    ("min_acc", "min-ACC"),
    ("wc_acc", "WC-ACC"),
    ("wf10", "WF^10"),
    ("wf100", "WF^100"),
    ("wp10", "WP^10"),
    ("wp100", "WP^100"),
]


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(np.mean(a)), float(np.std(a))


def _cell(values: list[float]) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {std:.3f}"


def accuracy_figure(bench: str, learners: list[str], runs: dict, iterations_per_task: int):
    """Accuracy of every task at every evaluation, seed 0, one panel per learner; switches dashed."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(learners), 1, figsize=(10, 2.4 * len(learners)), sharex=True, squeeze=False)
    for ax, learner in zip(axes[:, 0], learners):
        run = runs[(bench, learner, 0)]
        acc, iters = run["acc"], run["iterations"]
        for task in range(acc.shape[1]):
            ax.plot(iters, acc[:, task], lw=1.0, label=f"task {task + 1}")
        for switch in range(1, acc.shape[1]):
            ax.axvline(switch * iterations_per_task + 0.5, color="k", ls="--", lw=0.7)
        ax.axhline(run["metrics"]["min_acc"], color="r", ls=":", lw=1.0, label="min-ACC (final)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{bench}, {learner} (seed 0)", fontsize=10)
    axes[0, 0].legend(fontsize=7, ncol=6, loc="lower left")
    axes[-1, 0].set_xlabel("training iteration (dashed: task switch)")
    fig.tight_layout()
    return fig


def zoom_figure(bench: str, learners: list[str], runs: dict, seeds: int, iterations_per_task: int):
    """Task-1 accuracy around the switch to task 2, every seed: the stability gap up close."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(learners), figsize=(3.6 * len(learners), 2.8), sharey=True, squeeze=False)
    lo, hi = iterations_per_task - 20, iterations_per_task + 80
    for ax, learner in zip(axes[0], learners):
        for seed in range(seeds):
            run = runs[(bench, learner, seed)]
            keep = (run["iterations"] >= lo) & (run["iterations"] <= hi)
            ax.plot(run["iterations"][keep], run["acc"][keep, 0], lw=1.0, label=f"seed {seed}")
        ax.axvline(iterations_per_task + 0.5, color="k", ls="--", lw=0.7)
        ax.set_title(f"{learner}: task 1 around switch", fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.02, 1.02)
    axes[0, 0].set_ylabel("task-1 accuracy")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(bench, fontsize=10)
    fig.tight_layout()
    return fig


def write_page(path: str | Path, subtitle: str, runs: dict, benchmarks: list[str], learners: list[str],
               seeds: int, tasks: int, iterations_per_task: int, monitor_dir: str | Path | None = None) -> Path:
    """report.html: findings (task-1 gap per benchmark and learner), the metric table, the accuracy
    figures, the monitor's event counts (when monitor_dir is given) and the cost of evaluation."""
    page = Page("Continual evaluation: the stability gap", subtitle)
    page.heading("Findings")
    lines, warn = [], []
    for bench in benchmarks:
        for learner in learners:
            gaps = [runs[(bench, learner, s)]["metrics"]["task1_gap"] for s in range(seeds)]
            mets = [runs[(bench, learner, s)]["metrics"] for s in range(seeds)]
            end = _mean_std([g["task_end"] for g in gaps])[0]
            low = _mean_std([g["minimum"] for g in gaps])[0]
            rec = _mean_std([g["recovered"] for g in gaps])[0]
            at = int(np.median([g["minimum_at"] for g in gaps]))
            mins = _mean_std([m["min_acc"] for m in mets])[0]
            ends = _mean_std([m["task_end_acc"] for m in mets])[0]
            lines.append(
                f"{bench}, {learner}: task-1 accuracy {end:.2f} at its end, lowest {low:.2f} during task 2 "
                f"(median iteration {at} of task 2), {rec:.2f} at the end of task 2; min-ACC {mins:.2f} "
                f"vs task-end accuracy {ends:.2f} (mean over {seeds} seeds)."
            )
            warn.append(bool(ends - mins > 0.1 and rec - low > 0.1))
    page.findings(lines, warn)
    page.paragraph(
        "Highlighted lines show a stability gap: a transient drop (worst-case accuracy well below the "
        "task-end accuracy) followed by recovery. Evaluating only at task ends would hide it."
    )
    page.heading("Metric table (at the end of the stream; mean ± std over seeds)")
    rows = []
    for bench in benchmarks:
        for learner in learners:
            mets = [runs[(bench, learner, s)]["metrics"] for s in range(seeds)]
            rows.append([bench, learner] + [_cell([m[key] for m in mets]) for key, _ in METRIC_COLUMNS])
    page.table(["benchmark", "learner"] + [label for _, label in METRIC_COLUMNS], rows)
    page.paragraph(
        "min-ACC: mean over earlier tasks of the lowest accuracy after that task ended. WC-ACC = "
        "(1/k) acc(current) + (1 - 1/k) min-ACC. WF^w / WP^w: largest drop / rise within any w "
        "consecutive evaluations (forgetting: earlier tasks, whole history; plasticity: each task while "
        "trained), averaged over tasks. task-end ACC: accuracy of each earlier task at its own end."
    )
    for bench in benchmarks:
        page.heading(f"{bench}: accuracy of every task at every iteration")
        page.figure(accuracy_figure(bench, learners, runs, iterations_per_task), f"{bench} accuracy")
        page.figure(zoom_figure(bench, learners, runs, seeds, iterations_per_task),
                    f"{bench} task 1 around the switch")
    if monitor_dir is not None:
        page.heading("Monitor")
        page.paragraph(
            f"Every run was also watched by stablelab.monitor.Monitor (gradient, update and logit signals, "
            f"detectors, default guard policy); run folders under {monitor_dir}, one per "
            f"benchmark/learner/seed, readable with `stablelab report FOLDER`. Events per run: "
            + ", ".join(f"{b}/{l}/seed{s}: {r['metrics'].get('monitor_events', 0)}"
                        for (b, l, s), r in runs.items()) + "."
        )
    page.heading("Cost of continual evaluation")
    cost_rows = []
    for bench in benchmarks:
        for learner in learners:
            rs = [runs[(bench, learner, s)] for s in range(seeds)]
            n_eval = sum(len(r["acc"]) for r in rs)
            eval_s = sum(r["eval_seconds"] for r in rs)
            run_s = sum(r["seconds"] for r in rs)
            n_iter = seeds * tasks * iterations_per_task
            cost_rows.append([bench, learner, n_eval, 1e3 * eval_s / n_eval,
                              1e3 * (run_s - eval_s) / n_iter, f"{100 * eval_s / run_s:.0f}%"])
    page.table(["benchmark", "learner", "evaluations", "ms per evaluation", "ms per training iteration",
                "share of run time"], cost_rows)
    page.paragraph("Wall-clock times on the machine that ran this report (shared CPUs make them noisy).")
    return page.write(path)
