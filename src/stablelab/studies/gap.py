"""`stablelab gap`: continual evaluation and the stability gap (De Lange et al. 2023).

Trains fine-tuning, experience replay and EWC through split-, permuted- and rotated-digits, evaluating
every seen task after every iteration, and writes report.html (per-iteration accuracy per task, task
switches marked, the metric table), summary.json and histories.npz into --out. Every run trains
through stablelab.run.loop and is one store folder under --out/runs/BENCHMARK/LEARNER/seedN (its
accuracy history as rows, its metrics as result.json); a finished run with the same configuration is
read back on a rerun.
"""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stablelab.continual.benchmarks import BENCHMARKS, Benchmark, make_benchmark
from stablelab.continual.evaluator import ContinualEvaluator
from stablelab.continual.learners import LEARNERS, MLP, StreamConfig, make_learner
from stablelab.continual.metrics import all_metrics, stability_gap, task_end_accuracy
from stablelab.config import Runtime, at_least, csv, setting
from stablelab.run.loop import open_run, read_finished, train_loop
from stablelab.run.progress import progress_bar
from stablelab.run.runtime import threads_scope
from stablelab.studies.command import Command
from stablelab.store.files import atomic_write_bytes, atomic_write_json


_STREAM = StreamConfig()  # the per-run defaults are written once, in StreamConfig


def _known(names: tuple, what: str):
    def check(values: tuple) -> str | None:
        if not values:
            return "is empty"
        unknown = [n for n in values if n not in names]
        if unknown:
            return f"unknown {what} {', '.join(unknown)}; choose from {', '.join(names)}"
        return None
    return check


@dataclass(frozen=True)
class GapSettings:
    """The gap study's settings (CLI flags derive from these; stablelab.config)."""

    benchmarks: tuple[str, ...] = setting(tuple(BENCHMARKS), f"comma-separated, from {', '.join(BENCHMARKS)}",
                                          parse=csv(str), check=_known(tuple(BENCHMARKS), "benchmarks"))
    learners: tuple[str, ...] = setting(tuple(LEARNERS), f"comma-separated, from {', '.join(LEARNERS)}",
                                        parse=csv(str), check=_known(tuple(LEARNERS), "learners"))
    tasks: int = setting(5, "tasks per benchmark (split: 2, 5 or 10)", check=at_least(2))
    iterations_per_task: int = setting(_STREAM.iterations_per_task, "training iterations per task",
                                       check=at_least(1))
    batch_size: int = setting(_STREAM.batch_size, "examples per iteration", check=at_least(1))
    lr: float = setting(_STREAM.lr, "SGD learning rate", check=lambda v: None if v > 0 else f"must be > 0, got {v}")
    momentum: float = setting(_STREAM.momentum, "SGD momentum",
                              check=lambda v: None if 0 <= v < 1 else f"must be in [0, 1), got {v}")
    hidden: int = setting(_STREAM.hidden, "MLP width (2 hidden layers)", check=at_least(1))
    memory_size: int = setting(_STREAM.memory_size, "replay memory (examples)", check=at_least(1))
    ewc_lambda: float = setting(_STREAM.ewc_lambda, "EWC penalty strength", check=at_least(0))
    eval_every: int = setting(_STREAM.eval_every, "evaluate every k training iterations (1 = every iteration)",
                              check=at_least(1))
    eval_subset: int = setting(_STREAM.eval_subset, "test examples per task used by the evaluator",
                               check=at_least(1))
    seeds: int = setting(3, "seeds per benchmark x learner", check=at_least(1))
    monitor: bool = setting(False, "also log every run's training signals through stablelab.monitor.Monitor "
                                   "into OUT/monitor/BENCHMARK/LEARNER/seedN (readable by `stablelab report`)")

    def check(self) -> str | None:
        if "split-digits" in self.benchmarks and 10 % self.tasks:
            return f"split-digits needs --tasks dividing 10 classes (2, 5 or 10), got {self.tasks}"
        return None

    def stream(self, device: str) -> StreamConfig:
        return StreamConfig(iterations_per_task=self.iterations_per_task, batch_size=self.batch_size, lr=self.lr,
                            momentum=self.momentum, hidden=self.hidden, memory_size=self.memory_size,
                            ewc_lambda=self.ewc_lambda, eval_every=self.eval_every,
                            eval_subset=self.eval_subset, device=device)


def train_run(benchmark: Benchmark, learner_name: str, config: StreamConfig, advance=None,
              monitor_dir: str | Path | None = None, monitor_config: dict | None = None
              ) -> tuple[ContinualEvaluator, dict | None]:
    """One learner through the benchmark's tasks in order, through stablelab.run.loop (the learner's
    `observe` takes the whole update), evaluating continually; returns the evaluator (.acc,
    .training_task, .iterations) and the monitor's summary (None without one). With monitor_dir, stablelab.monitor.Monitor watches the run (after
    backward, before optimizer.step(), through the learner's before_step) and writes a store folder
    there. The same steps, in the same order, as stablelab.continual.learners.run_stream."""
    import torch

    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    # 2 hidden ReLU layers with biases, one shared head for all tasks (as run_stream)
    model = MLP(benchmark.n_inputs, benchmark.n_classes, hidden=(config.hidden,) * 2, bias=True).to(device)
    learner = make_learner(learner_name, model, config)
    monitor = None
    if monitor_dir is not None:
        from stablelab.monitor import Monitor

        monitor = Monitor(learner.model, learner.optimizer, log_dir=monitor_dir, sinks=(), attention=False,
                          task="classification",
                          config={"study": "gap", **(monitor_config or {})})
        learner.before_step = monitor.observe
    evaluator = ContinualEvaluator(benchmark.test_sets, every=config.eval_every,
                                   subset_size=config.eval_subset, device=device, seed=config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    per_task, current = config.iterations_per_task, {}

    def step(i: int) -> float:
        t, j = divmod(i, per_task)
        if j == 0:
            task = benchmark.tasks[t]
            current["x"], current["y"] = task.x_train.to(device), task.y_train.to(device)
            learner.start_task(t)
            evaluator.start_task(t)
        x, y = current["x"], current["y"]
        pick = torch.randint(len(x), (config.batch_size,), generator=generator).to(device)
        loss = learner.observe(x[pick], y[pick])
        evaluator.after_iteration(model)
        if j == per_task - 1:
            learner.end_task(t, x, y)
        return loss

    monitor_summary = None
    try:  # no divergence check: a continual run's history has a fixed length
        train_loop(len(benchmark.tasks) * per_task, step, finite_every=0, advance=advance)
    finally:
        if monitor is not None:
            monitor_summary = monitor.close()
    return evaluator, monitor_summary


def _run_metrics(acc: np.ndarray, training_task: np.ndarray) -> dict:
    out = all_metrics(acc, training_task)
    current = int(training_task[-1])
    ends = task_end_accuracy(acc, training_task)
    out["task_end_acc"] = float(np.mean([v for t, v in ends.items() if t != current]))
    out["task1_gap"] = stability_gap(acc, training_task, 0)
    return out


def main(settings: GapSettings, runtime: Runtime) -> int:
    """`stablelab gap`: every benchmark x learner x seed, then the report."""
    out = runtime.out
    summary = run_study(settings.stream(runtime.device), list(settings.benchmarks), list(settings.learners),
                        settings.tasks, settings.seeds, out, monitor=settings.monitor, threads=None,
                        progress=runtime.progress)
    print(f"wrote {out / 'report.html'}, {out / 'summary.json'}, {out / 'histories.npz'} in "
          f"{summary['wall_seconds']:.0f} s")
    return 0


# threads 1 by default: fastest for these tiny models on a shared machine
COMMAND = Command(GapSettings, main, runtime=("out", "device", "threads", "progress"),
                  runtime_defaults={"threads": 1})
configure, run = COMMAND.configure, COMMAND.run


def run_study(base: StreamConfig, benchmarks: list[str], learners: list[str], tasks: int, seeds: int,
              out: Path, monitor: bool = False, threads: int | None = 1, progress: bool = True) -> dict:
    """Every benchmark x learner x seed (seeds 0 .. seeds-1 replace base.seed), then summary.json,
    histories.npz and report.html in `out`; returns the summary. Torch's thread count is restored."""
    total = len(benchmarks) * len(learners) * seeds * tasks * base.iterations_per_task
    runs: dict[tuple[str, str, int], dict] = {}
    started = time.perf_counter()
    with threads_scope(threads):
        with progress_bar("gap", total, unit="iterations", remaining=False, enabled=progress) as bar:
            for bench in benchmarks:
                benchmark = make_benchmark(bench, n_tasks=tasks)
                for learner in learners:
                    for seed in range(seeds):
                        bar.update(description=f"{bench} {learner} seed {seed}")
                        runs[(bench, learner, seed)] = _stored_run(
                            benchmark, bench, learner, dataclasses.replace(base, seed=seed), tasks,
                            out / "runs" / bench / learner / f"seed{seed}",
                            out / "monitor" / bench / learner / f"seed{seed}" if monitor else None, bar.advance)
    wall = time.perf_counter() - started

    # -- summary.json and the raw histories --------------------------------------------------
    summary = {
        "command": "gap",
        "config": {**dataclasses.asdict(base), "seeds": seeds, "tasks": tasks,
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

    from stablelab.report.gap_figures import write_page

    subtitle = (f"{len(runs)} runs ({', '.join(benchmarks)} x {', '.join(learners)} x {seeds} seeds), "
                f"{tasks} tasks x {base.iterations_per_task} iterations, SGD lr {base.lr} momentum "
                f"{base.momentum}, batch {base.batch_size}, MLP 2x{base.hidden}, evaluation every "
                f"{base.eval_every} iteration(s) on {base.eval_subset} test examples per task; {wall:.0f} s.")
    write_page(out / "report.html", subtitle, runs, benchmarks, learners, seeds, tasks, base.iterations_per_task,
               monitor_dir=out / "monitor" if monitor else None)
    return summary


def _stored_run(benchmark: Benchmark, bench: str, learner: str, config: StreamConfig, tasks: int,
                run_dir: Path, monitor_dir: Path | None, advance) -> dict:
    """One run as a store folder: rows = the accuracy history (one per evaluation), result = its
    metrics and timings. A finished folder with the same configuration is read back."""
    run_config = {"benchmark": bench, "learner": learner, "tasks": tasks, "monitor": monitor_dir is not None,
                  **dataclasses.asdict(config)}
    finished = read_finished(run_dir, run_config)
    if finished is not None:
        result, rows = finished
        advance(tasks * config.iterations_per_task)
        acc = np.array([[np.nan if v is None else v for v in r["acc"]] for r in rows], dtype=float)
        return {"acc": acc, "training_task": np.array([r["training_task"] for r in rows]),
                "iterations": np.array([r["iteration"] for r in rows]), **result}
    writer = open_run(run_dir, run_config)
    try:
        t0 = time.perf_counter()
        evaluator, monitor_summary = train_run(benchmark, learner, config, advance, monitor_dir,
                              {"benchmark": bench, "learner": learner, "seed": config.seed})
        seconds = time.perf_counter() - t0
        acc, training_task = evaluator.acc, evaluator.training_task
        run = {"acc": acc, "training_task": training_task, "iterations": evaluator.iterations,
               "metrics": _run_metrics(acc, training_task), "seconds": seconds,
               "eval_seconds": evaluator.eval_seconds}
        if monitor_summary is not None:
            run["metrics"]["monitor_events"] = sum(monitor_summary["events"].values())
        for i in range(len(acc)):
            writer.log({"iteration": int(evaluator.iterations[i]), "training_task": int(training_task[i]),
                        "acc": [float(v) for v in acc[i]]})
    finally:
        writer.close()
    writer.finish({k: run[k] for k in ("metrics", "seconds", "eval_seconds")})
    return run
