"""`stablelab gap`: continual evaluation and the stability gap (De Lange et al. 2023).

Trains fine-tuning, experience replay and EWC through split-, permuted- and rotated-digits, evaluating
every seen task after every iteration, and writes report.html (per-iteration accuracy per task, task
switches marked, the metric table), summary.json and histories.npz into --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import time
from pathlib import Path

import numpy as np

from stablelab.continual.benchmarks import BENCHMARKS, make_benchmark
from stablelab.continual.learners import LEARNERS, StreamConfig, run_stream
from stablelab.continual.metrics import (
    all_metrics,
    stability_gap,
    task_end_accuracy,
    task_end_indices,
)
from stablelab.errors import UsageError
from stablelab.store.files import atomic_write_bytes, atomic_write_json

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


def _names(text: str, known, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--{what} is empty")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
    return names


def configure(parser: argparse.ArgumentParser) -> None:
    d = StreamConfig()
    parser.add_argument("--out", required=True, help="folder for report.html, summary.json, histories.npz")
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS),
                        help=f"comma-separated, from {', '.join(BENCHMARKS)}")
    parser.add_argument("--learners", default=",".join(LEARNERS),
                        help=f"comma-separated, from {', '.join(LEARNERS)}")
    parser.add_argument("--tasks", type=int, default=5, help="tasks per benchmark (split: 1, 2, 5 or 10)")
    parser.add_argument("--iterations-per-task", type=int, default=d.iterations_per_task)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate")
    parser.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    parser.add_argument("--hidden", type=int, default=d.hidden, help="MLP width (2 hidden layers)")
    parser.add_argument("--memory-size", type=int, default=d.memory_size, help="replay memory (examples)")
    parser.add_argument("--ewc-lambda", type=float, default=d.ewc_lambda)
    parser.add_argument("--eval-every", type=int, default=d.eval_every,
                        help="evaluate every k training iterations (1 = every iteration)")
    parser.add_argument("--eval-subset", type=int, default=d.eval_subset,
                        help="test examples per task used by the evaluator")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per benchmark x learner")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--monitor", action="store_true",
                        help="also log every run's training signals through stablelab.monitor.Monitor "
                             "into OUT/monitor/BENCHMARK/LEARNER/seedN (readable by `stablelab report`)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest for these tiny models on a shared machine)")


def _validate(args) -> tuple[list[str], list[str]]:
    benchmarks = _names(args.benchmarks, BENCHMARKS, "benchmarks")
    learners = _names(args.learners, LEARNERS, "learners")
    for flag, value, low in [("--iterations-per-task", args.iterations_per_task, 1),
                             ("--batch-size", args.batch_size, 1), ("--hidden", args.hidden, 1),
                             ("--memory-size", args.memory_size, 1), ("--eval-every", args.eval_every, 1),
                             ("--eval-subset", args.eval_subset, 1), ("--seeds", args.seeds, 1),
                             ("--tasks", args.tasks, 2), ("--threads", args.threads, 1)]:
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if "split-digits" in benchmarks and 10 % args.tasks:
        raise UsageError(f"split-digits needs --tasks dividing 10 classes (2, 5 or 10), got {args.tasks}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.momentum < 1:
        raise UsageError(f"--momentum must be in [0, 1), got {args.momentum}")
    if args.ewc_lambda < 0:
        raise UsageError(f"--ewc-lambda must be >= 0, got {args.ewc_lambda}")
    import torch

    try:
        torch.empty(0, device=args.device)
    except (RuntimeError, AssertionError) as error:
        raise UsageError(f"--device {args.device} is not usable here ({str(error).splitlines()[0]})")
    return benchmarks, learners


def _monitor_attacher(log_dir: Path, monitors: list, config: dict):
    """An on_learner callback that attaches stablelab.monitor.Monitor to the learner."""
    from stablelab.monitor import Monitor

    def attach(learner) -> None:
        monitor = Monitor(learner.model, learner.optimizer, log_dir=log_dir, sinks=(), attention=False,
                          config={"study": "gap", **config})
        learner.before_step = monitor.observe  # after backward, before optimizer.step()
        monitors.append(monitor)

    return attach


def _run_metrics(acc: np.ndarray, training_task: np.ndarray) -> dict:
    out = all_metrics(acc, training_task)
    current = int(training_task[-1])
    ends = task_end_accuracy(acc, training_task)
    out["task_end_acc"] = float(np.mean([v for t, v in ends.items() if t != current]))
    out["task1_gap"] = stability_gap(acc, training_task, 0)
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(np.mean(a)), float(np.std(a))


def _cell(values: list[float]) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {std:.3f}"


def _accuracy_figure(bench: str, learners: list[str], runs: dict, iterations_per_task: int):
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


def _zoom_figure(bench: str, learners: list[str], runs: dict, seeds: int, iterations_per_task: int):
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


def run(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from stablelab.report.html import Page

    import torch

    benchmarks, learners = _validate(args)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    base = StreamConfig(
        iterations_per_task=args.iterations_per_task, batch_size=args.batch_size, lr=args.lr,
        momentum=args.momentum, hidden=args.hidden, memory_size=args.memory_size,
        ewc_lambda=args.ewc_lambda, eval_every=args.eval_every, eval_subset=args.eval_subset,
        device=args.device,
    )
    total = len(benchmarks) * len(learners) * args.seeds * args.tasks * args.iterations_per_task
    runs: dict[tuple[str, str, int], dict] = {}
    started = time.perf_counter()
    with Progress(TextColumn("[bold]gap[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=False) as progress:
        bar = progress.add_task("", total=total)
        for bench in benchmarks:
            benchmark = make_benchmark(bench, n_tasks=args.tasks)
            for learner in learners:
                for seed in range(args.seeds):
                    progress.update(bar, description=f"{bench} {learner} seed {seed}")
                    config = dataclasses.replace(base, seed=seed)
                    monitors: list = []
                    attach = None
                    if args.monitor:
                        attach = _monitor_attacher(out / "monitor" / bench / learner / f"seed{seed}",
                                                   monitors, {"benchmark": bench, "learner": learner,
                                                              "seed": seed})
                    t0 = time.perf_counter()
                    try:
                        evaluator = run_stream(benchmark, learner, config, on_learner=attach,
                                               on_iteration=lambda: progress.advance(bar))
                    finally:
                        for monitor in monitors:
                            monitor.close()
                    seconds = time.perf_counter() - t0
                    acc, training_task = evaluator.acc, evaluator.training_task
                    runs[(bench, learner, seed)] = {
                        "acc": acc, "training_task": training_task, "iterations": evaluator.iterations,
                        "metrics": _run_metrics(acc, training_task),
                        "seconds": seconds, "eval_seconds": evaluator.eval_seconds,
                    }
                    if monitors:
                        runs[(bench, learner, seed)]["metrics"]["monitor_events"] = len(monitors[0].events)
    wall = time.perf_counter() - started

    # -- summary.json and the raw histories --------------------------------------------------
    summary = {
        "command": "gap",
        "config": {**dataclasses.asdict(base), "seeds": args.seeds, "tasks": args.tasks,
                   "benchmarks": benchmarks, "learners": learners},
        "wall_seconds": wall,
        "runs": [
            {"benchmark": b, "learner": l, "seed": s, "seconds": r["seconds"],
             "eval_seconds": r["eval_seconds"], **r["metrics"]}
            for (b, l, s), r in runs.items()
        ],
    }
    atomic_write_json(out / "summary.json", summary)
    buffer = io.BytesIO()
    arrays = {}
    for (b, l, s), r in runs.items():
        arrays[f"{b}/{l}/seed{s}/acc"] = r["acc"]
        arrays[f"{b}/{l}/seed{s}/training_task"] = r["training_task"]
        arrays[f"{b}/{l}/seed{s}/iterations"] = r["iterations"]
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(out / "histories.npz", buffer.getvalue())

    # -- report ----------------------------------------------------------------------------------
    page = Page(
        "Continual evaluation: the stability gap",
        f"{len(runs)} runs ({', '.join(benchmarks)} x {', '.join(learners)} x {args.seeds} seeds), "
        f"{args.tasks} tasks x {args.iterations_per_task} iterations, SGD lr {args.lr} momentum "
        f"{args.momentum}, batch {args.batch_size}, MLP 2x{args.hidden}, evaluation every "
        f"{args.eval_every} iteration(s) on {args.eval_subset} test examples per task; {wall:.0f} s.",
    )
    page.heading("Findings")
    lines, warn = [], []
    for bench in benchmarks:
        for learner in learners:
            gaps = [runs[(bench, learner, s)]["metrics"]["task1_gap"] for s in range(args.seeds)]
            mets = [runs[(bench, learner, s)]["metrics"] for s in range(args.seeds)]
            end = _mean_std([g["task_end"] for g in gaps])[0]
            low = _mean_std([g["minimum"] for g in gaps])[0]
            rec = _mean_std([g["recovered"] for g in gaps])[0]
            at = int(np.median([g["minimum_at"] for g in gaps]))
            mins = _mean_std([m["min_acc"] for m in mets])[0]
            ends = _mean_std([m["task_end_acc"] for m in mets])[0]
            lines.append(
                f"{bench}, {learner}: task-1 accuracy {end:.2f} at its end, lowest {low:.2f} during task 2 "
                f"(median iteration {at} of task 2), {rec:.2f} at the end of task 2; min-ACC {mins:.2f} "
                f"vs task-end accuracy {ends:.2f} (mean over {args.seeds} seeds)."
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
            mets = [runs[(bench, learner, s)]["metrics"] for s in range(args.seeds)]
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
        page.figure(_accuracy_figure(bench, learners, runs, args.iterations_per_task), f"{bench} accuracy")
        page.figure(_zoom_figure(bench, learners, runs, args.seeds, args.iterations_per_task),
                    f"{bench} task 1 around the switch")
    if args.monitor:
        page.heading("Monitor")
        page.paragraph(
            f"Every run was also watched by stablelab.monitor.Monitor (gradient, update and logit signals, "
            f"detectors, default guard policy); run folders under {out / 'monitor'}, one per "
            f"benchmark/learner/seed, readable with `stablelab report FOLDER`. Events per run: "
            + ", ".join(f"{b}/{l}/seed{s}: {r['metrics'].get('monitor_events', 0)}"
                        for (b, l, s), r in runs.items()) + "."
        )
    page.heading("Cost of continual evaluation")
    cost_rows = []
    for bench in benchmarks:
        for learner in learners:
            rs = [runs[(bench, learner, s)] for s in range(args.seeds)]
            n_eval = sum(len(r["acc"]) for r in rs)
            eval_s = sum(r["eval_seconds"] for r in rs)
            run_s = sum(r["seconds"] for r in rs)
            n_iter = args.seeds * args.tasks * args.iterations_per_task
            cost_rows.append([bench, learner, n_eval, 1e3 * eval_s / n_eval,
                              1e3 * (run_s - eval_s) / n_iter, f"{100 * eval_s / run_s:.0f}%"])
    page.table(["benchmark", "learner", "evaluations", "ms per evaluation", "ms per training iteration",
                "share of run time"], cost_rows)
    page.paragraph("Wall-clock times on the machine that ran this report (shared CPUs make them noisy).")
    page.write(out / "report.html")
    print(f"wrote {out / 'report.html'}, {out / 'summary.json'}, {out / 'histories.npz'} in {wall:.0f} s")
    return 0
