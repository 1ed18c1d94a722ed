"""Detection quality from logs (issue 22, point 4): the detection benchmark's runs written as
training logs, at logging intervals 1, 10 and 50, `stablelab diagnose`d and scored as the live
monitor is (recall, recall over faults that did harm, false warnings per 1k healthy steps, lead),
beside the live monitor's figures from the same benchmark.

    .venv/bin/python benchmarks/diagnose_quality.py BENCH_OUT [--intervals 1,10,50]
        [--split heldout] [--writers tensorboard,csv,hf,mlflow] [--workers 2] [--docs]

BENCH_OUT is a `stablelab detect-bench --out` folder (its runs/ hold every run's per-step rows). A
fault is read from its unguarded (warn-only) run, its healthy twin from the twin run, a healthy
scenario from its default run. The log holds what such a run's logger would: the loss, the
gradient norm, the learning rate (and, in the "+ stablelab's columns" rows, the monitor's own
columns), one value every `interval` steps.

Two parts:
- **The real writers**: every run is written by SummaryWriter, Lightning's CSVLogger, the HF
  TrainerState (the Trainer's loss: the mean since the last log, its NaN filter included) and
  MLflow's file store, logging at the steps that are multiples of the interval, read back and
  diagnosed; their events must equal those of the same rows diagnosed in memory (checked, printed).
- **Every logging phase**: a planted fault sits at a round step, which a log every 10 or 50 steps
  always holds; a real fault lands anywhere. The table's figures are means over up to ten phases
  (logged steps = phase mod interval), replayed in memory (the check above shows that path is the
  writers' path), with the fault-on-a-logged-step recall beside them.
Writes BENCH_OUT/diagnose_quality.json; --docs puts the table in docs/diagnose.md between its
markers."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

BASIC = ("loss", "grad_norm", "lr")
OWN = ("update_ratio_max", "attn_logit_max", "log_z_mean", "softmax_collapse_fraction")
STEP = ("grad_norm_typical", "grad_norm_ratio_min", "spike_ratio_max", "outlier", "trusted", "nonfinite")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "diagnose.md"
BEGIN, END = "<!-- diagnose-quality:begin -->", "<!-- diagnose-quality:end -->"
FIGURES = ("recall", "recall_harmful", "false_warnings_per_1k", "false_warning_incidents", "median_lead_steps")


def logged_rows(rows: list[dict], interval: int, columns: tuple[str, ...], mean_loss: bool = False,
                phase: int = 0) -> list[dict]:
    """What a logger holds: one row every `interval` steps (those with step = phase mod interval)
    with `columns` (flags as 0/1). mean_loss:
    the loss is the Hugging Face Trainer's, the mean over the steps since the last log, with its
    default `logging_nan_inf_filter` (a non-finite step adds the interval's running total over
    1 + the steps since the last log instead of itself: transformers Trainer._inner_training_loop)."""
    out, total, since = [], 0.0, 0
    for row in rows:
        step = row.get("step")
        if step is None:
            continue
        if mean_loss and isinstance(row.get("loss"), (int, float)):
            loss = float(row["loss"])
            total += loss if math.isfinite(loss) else total / (1 + since)
            since += 1
        if (step - phase) % interval:
            continue
        kept = {k: float(row[k]) for k in columns if isinstance(row.get(k), (int, float))}
        if mean_loss and "loss" in kept and since:
            kept["loss"], total, since = total / since, 0.0, 0
        if "loss" in kept:
            out.append({"step": int(step), **kept})
    return out


def series_of(rows: list[dict]) -> dict:
    """The logged rows as `stablelab.logs` reads a log: signal -> (steps, values) arrays."""
    import numpy as np

    names = sorted({k for row in rows for k in row if k != "step"})
    return {n: (np.array([r["step"] for r in rows if n in r], dtype=np.int64),
                np.array([r[n] for r in rows if n in r], dtype=np.float64)) for n in names}


def write_log(writer: str, rows: list[dict], folder: Path) -> Path:
    """The rows as `writer` writes them; returns the path to diagnose."""
    folder.mkdir(parents=True, exist_ok=True)
    if writer == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(folder / "tb"))
        for row in rows:
            for key, value in row.items():
                if key != "step":
                    tb.add_scalar(key, value, row["step"])
        tb.close()
        return folder / "tb"
    if writer == "csv":
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(str(folder), name="run", version=0, flush_logs_every_n_steps=10 ** 9)
        for row in rows:
            logger.log_metrics({("train_loss" if k == "loss" else "lr-AdamW" if k == "lr" else k): v
                                for k, v in row.items() if k != "step"}, step=row["step"])
        logger.save()
        logger.finalize("success")
        return Path(logger.log_dir) / "metrics.csv"
    if writer == "hf":
        import transformers

        names = {"lr": "learning_rate"}
        history = [{**{names.get(k, k): v for k, v in row.items()}} for row in rows]
        state = transformers.TrainerState(log_history=history, global_step=rows[-1]["step"] if rows else 0)
        state.save_to_json(str(folder / "trainer_state.json"))
        return folder / "trainer_state.json"
    if writer == "mlflow":
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=(folder / "mlruns").as_uri())
        run = client.create_run(client.create_experiment("replay"))
        metrics = [Metric(k, float(v), 0, row["step"]) for row in rows for k, v in row.items() if k != "step"]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run.info.run_id, metrics=metrics[i:i + 1000])
        client.set_terminated(run.info.run_id)
        return folder / "mlruns" / run.info.experiment_id / run.info.run_id
    raise ValueError(writer)


def diagnose_events(writer: str, rows: list[dict]) -> list[dict]:
    from stablelab.diagnosis import diagnose

    if not rows:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        diagnosis = diagnose(write_log(writer, rows, Path(tmp)))
        return [{"step": e.step, "severity": e.severity, "kind": e.kind} for e in diagnosis.detection.events]


def memory_events(rows: list[dict], interval: int, detectors: dict | None = None) -> list[dict]:
    """The same rows diagnosed without a file (what `diagnose` does after reading one)."""
    from stablelab.diagnosis.detect import detect
    from stablelab.monitor.settings import MonitorSettings

    if not rows:
        return []
    settings = MonitorSettings(detectors=detectors) if detectors else None
    detection = detect(series_of(rows), settings, interval=interval)
    return [{"step": e.step, "severity": e.severity, "kind": e.kind} for e in detection.events]


@dataclass
class Split:
    bench: Path
    name: str
    seeds: list
    scenarios: list
    runs: dict

    def parts(self, seed: int, name: str) -> dict[str, list[dict]]:
        run = self.runs[(seed, name)]
        kind = next(s.kind for s in self.scenarios if s.name == name)
        return {"run": run["warn_only"]["rows"], "twin": run["twin"]["rows"]} if kind == "fault" else \
            {"run": run["default"]["rows"]}


def load_split(bench: Path, name: str) -> Split:
    from stablelab.bench.scenarios import suite
    from stablelab.io import read_json_exact

    summary = json.loads((bench / "summary.json").read_text())
    seeds, scenarios = summary["seeds"][name], suite(summary["quick"], name)
    runs = {(seed, s.name): read_json_exact(bench / "runs" / f"{name}-seed{seed}" / f"{s.name}.json")
            for seed in seeds for s in scenarios}
    return Split(bench, name, seeds, scenarios, runs)


def replay_split(split: Split, interval: int, columns: tuple[str, ...], phase: int = 0,
                 detectors: dict | None = None, mean_loss: bool = False) -> dict:
    """The split's runs logged every `interval` steps at `phase`, diagnosed in memory, scored."""
    found = {key: {part: memory_events(logged_rows(rows, interval, columns, mean_loss, phase), interval, detectors)
                   for part, rows in split.parts(*key).items()} for key in split.runs}
    return score(split, found)


def score(split: Split, found: dict) -> dict:
    from stablelab.bench.verdicts import aggregate, harm_unguarded, is_harmless, score_fault, score_healthy

    entries = []
    for seed in split.seeds:
        for scenario in split.scenarios:
            run = split.runs[(seed, scenario.name)]
            events = found[(seed, scenario.name)]
            entry = {"name": scenario.name, "seed": seed, "kind": scenario.kind, "fault": scenario.fault,
                     "size": scenario.settings.get("factor"), "by_detector": {}}
            if scenario.kind == "fault":
                unguarded = {**run["warn_only"], "events": events["run"], "stopped_at": None}
                twin = {**run["twin"], "events": events["twin"]}
                entry["harm_unguarded"] = harm_unguarded(scenario, run)
                entry["harmless"] = is_harmless(scenario, entry["harm_unguarded"])
                entry["by_detector"]["stablelab"] = score_fault(
                    "stablelab", scenario, {"default": unguarded, "warn_only": run["warn_only"], "twin": twin})
            else:
                entry["by_detector"]["stablelab"] = score_healthy(
                    "stablelab", {"default": {**run["default"], "events": events["run"]}})
            entries.append(entry)
    return aggregate(entries, "stablelab")


def phases(interval: int, count: int = 10) -> list[int]:
    return list(range(0, interval, max(1, interval // count)))[:count]


def over_phases(split: Split, interval: int, columns: tuple[str, ...], mean_loss: bool = False) -> dict:
    """Mean figures over the logging phases, and the recall when the fault is on a logged step."""
    runs = [replay_split(split, interval, columns, phase, mean_loss=mean_loss) for phase in phases(interval)]
    out = {k: statistics.mean(r[k] for r in runs if r.get(k) is not None) if any(r.get(k) is not None for r in runs)
           else None for k in FIGURES}
    out["recall_fault_logged"] = runs[0]["recall"]
    out["phases"] = len(runs)
    return out


def writer_task(args: tuple) -> tuple:
    key, writer, interval, columns, parts = args
    mean = writer == "hf"
    same = True
    for rows in parts.values():
        logged = logged_rows(rows, interval, columns, mean_loss=mean)
        same &= diagnose_events(writer, logged) == memory_events(logged, interval)
    return key, same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("--intervals", default="1,10,50")
    parser.add_argument("--split", default="heldout", choices=("heldout", "calibration"))
    parser.add_argument("--writers", default="tensorboard,csv,hf,mlflow")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--docs", action="store_true")
    parser.add_argument("--render", action="store_true", help="only redraw the table from the saved JSON")
    args = parser.parse_args()
    from stablelab.io import atomic_write_json

    if args.render:
        saved = json.loads((args.bench / f"diagnose_quality_{args.split}.json").read_text())
        return publish(markdown(saved["rows"], saved["seeds"], saved["writers"], args.split), args.docs)

    split = load_split(args.bench, args.split)
    intervals = [int(i) for i in args.intervals.split(",")]
    jobs = [((writer, interval, key), writer, interval, BASIC, split.parts(*key))
            for writer in args.writers.split(",") if writer for interval in intervals for key in split.runs]
    agree: dict = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for done, (key, same) in enumerate(pool.map(writer_task, jobs, chunksize=4)):
            agree.setdefault(key[:2], []).append(same)
            if done % 100 == 0:
                print(f"{done}/{len(jobs)} logs written and diagnosed", file=sys.stderr, flush=True)
    writers = [{"writer": w, "interval": i, "logs": len(v), "same_events_as_memory": sum(v)}
               for (w, i), v in agree.items()]
    summary = json.loads((args.bench / "summary.json").read_text())
    live = summary["detectors"]["stablelab"] if args.split == "heldout" else \
        summary["calibration"]["detectors"]["stablelab"]
    table = [{"log": "live monitor (default policy)", "interval": 1, "signals": "every signal",
              **{k: live.get(k) for k in FIGURES}, "recall_fault_logged": live.get("recall"), "phases": 1}]
    for interval in intervals:
        for log, columns, mean, label in (
                ("per-step values (TensorBoard, CSVLogger, MLflow, W&B)", BASIC, False, "loss, grad_norm, lr"),
                ("HF Trainer (mean loss over the interval)", BASIC, True, "loss, grad_norm, lr"),
                ("per-step values", BASIC + STEP + OWN, False, "+ stablelab's columns")):
            if mean and interval == 1:
                continue  # the mean over one step is the step's loss (the NaN filter aside)
            table.append({"log": log, "interval": interval, "signals": label,
                          **over_phases(split, interval, columns, mean)})
            print(table[-1], file=sys.stderr, flush=True)
    atomic_write_json(args.bench / f"diagnose_quality_{args.split}.json",
                      {"split": args.split, "seeds": split.seeds, "rows": table, "writers": writers})
    publish(markdown(table, split.seeds, writers, args.split), args.docs)


def publish(lines: list[str], docs: bool) -> None:
    print("\n".join(lines))
    if docs:
        text = DOCS.read_text()
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        DOCS.write_text(text[:start] + "\n" + "\n".join(lines) + "\n" + text[end:])


def markdown(table: list[dict], seeds: list[int], writers: list[dict], split: str = "heldout") -> list[str]:
    def f(x):
        return "-" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)

    lines = [f"{'Held-out' if split == 'heldout' else 'Calibration'} seeds {', '.join(map(str, seeds))}:", "",
             "| log | interval | signals in the log | recall (mean over phases) | recall, fault on a logged step | "
             "recall, faults that did harm | false warnings / 1k healthy steps | median lead (steps) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in table:
        lines.append(f"| {row['log']} | {row['interval']} | {row['signals']} | {f(row['recall'])} | "
                     f"{f(row['recall_fault_logged'])} | {f(row['recall_harmful'])} | "
                     f"{f(row['false_warnings_per_1k'])} | {f(row['median_lead_steps'])} |")
    same = sum(w["same_events_as_memory"] for w in writers)
    total = sum(w["logs"] for w in writers)
    names = sorted({w["writer"] for w in writers})
    intervals = sorted({w["interval"] for w in writers})
    lines += ["", f"Written by the real libraries ({', '.join(names)}) every {', '.join(map(str, intervals))} steps "
              f"(faults on a logged step) and read back: {same} of {total} logs gave the same events as the "
              "same rows diagnosed in memory."]
    bad = [w for w in writers if w["same_events_as_memory"] != w["logs"]]
    lines += [f"Differing: {w['writer']} every {w['interval']}: {w['logs'] - w['same_events_as_memory']} logs."
              for w in bad]
    return lines


if __name__ == "__main__":
    main()
