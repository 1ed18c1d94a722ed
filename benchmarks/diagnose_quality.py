"""Detection quality from logs (issue 22, point 4): the detection benchmark's held-out runs written as
training logs by the real libraries, at logging intervals 1, 10 and 50, then `stablelab diagnose`d
and scored as the live monitor is (recall, recall over faults that did harm, false warnings per 1k
healthy steps, lead), beside the live monitor's figures from the same benchmark.

    .venv/bin/python benchmarks/diagnose_quality.py BENCH_OUT [--intervals 1,10,50]
        [--writers tensorboard,csv,hf,mlflow] [--workers 2] [--docs]

BENCH_OUT is a `stablelab detect-bench --out` folder (its runs/ hold every run's per-step rows). A
fault is read from its unguarded (warn-only) run, its healthy twin from the twin run, a healthy
scenario from its default run. The log holds what such a run's logger would: the loss, the
gradient norm, the learning rate (and, in the "all signals" rows, stablelab's own sampled columns),
one value every `interval` steps. Writes BENCH_OUT/diagnose_quality.json; --docs puts the table in
docs/diagnose.md between its markers."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BASIC = ("loss", "grad_norm", "lr")
OWN = ("update_ratio_max", "attn_logit_max", "log_z_mean", "softmax_collapse_fraction")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "diagnose.md"
BEGIN, END = "<!-- diagnose-quality:begin -->", "<!-- diagnose-quality:end -->"


def logged_rows(rows: list[dict], interval: int, columns: tuple[str, ...]) -> list[dict]:
    out = []
    for row in rows:
        step = row.get("step")
        if step is None or step % interval:
            continue
        kept = {k: row[k] for k in columns if isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)}
        if "loss" in kept:
            out.append({"step": int(step), **kept})
    return out


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


def task(args: tuple) -> tuple:
    key, writer, interval, columns, parts = args
    return key, {part: diagnose_events(writer, logged_rows(rows, interval, columns)) for part, rows in parts.items()}


def score(bench: Path, scenarios, seeds, runs, found: dict) -> dict:
    from stablelab.bench.verdicts import aggregate, harm_unguarded, is_harmless, score_fault, score_healthy

    entries = []
    for seed in seeds:
        for scenario in scenarios:
            run = runs[(seed, scenario.name)]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("--intervals", default="1,10,50")
    parser.add_argument("--writers", default="tensorboard,csv,hf,mlflow")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--docs", action="store_true")
    args = parser.parse_args()
    from stablelab.bench.scenarios import suite
    from stablelab.io import atomic_write_json, read_json_exact

    summary = json.loads((args.bench / "summary.json").read_text())
    seeds = summary["seeds"]["heldout"]
    scenarios = suite(summary["quick"], "heldout")
    runs = {(seed, s.name): read_json_exact(args.bench / "runs" / f"heldout-seed{seed}" / f"{s.name}.json")
            for seed in seeds for s in scenarios}
    configs = [(w, int(i), cols, label) for w in args.writers.split(",") for i in args.intervals.split(",")
               for cols, label in ((BASIC, "loss, grad_norm, lr"),)]
    configs += [("csv", int(i), BASIC + OWN, "+ stablelab's columns") for i in args.intervals.split(",")]
    jobs = []
    for writer, interval, columns, label in configs:
        for (seed, name), run in runs.items():
            kind = next(s.kind for s in scenarios if s.name == name)
            parts = {"run": run["warn_only"]["rows"], "twin": run["twin"]["rows"]} if kind == "fault" else \
                {"run": run["default"]["rows"]}
            jobs.append((((writer, interval, label), (seed, name)), writer, interval, columns, parts))
    found: dict = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for done, (key, events) in enumerate(pool.map(task, jobs, chunksize=4)):
            found.setdefault(key[0], {})[key[1]] = events
            if done % 100 == 0:
                print(f"{done}/{len(jobs)} logs diagnosed", file=sys.stderr, flush=True)
    live = summary["detectors"]["stablelab"]
    table = [{"writer": "live monitor (default policy)", "interval": 1, "signals": "every signal",
              **{k: live.get(k) for k in ("recall", "recall_harmful", "false_warnings_per_1k", "median_lead_steps")}}]
    for (writer, interval, label), events in found.items():
        figures = score(args.bench, scenarios, seeds, runs, events)
        table.append({"writer": writer, "interval": interval, "signals": label,
                      **{k: figures.get(k) for k in ("recall", "recall_harmful", "false_warnings_per_1k",
                                                      "median_lead_steps", "recall_ci", "harmless_faults")}})
    atomic_write_json(args.bench / "diagnose_quality.json", {"seeds": seeds, "rows": table})
    lines = markdown(table, seeds)
    print("\n".join(lines))
    if args.docs:
        text = DOCS.read_text()
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        DOCS.write_text(text[:start] + "\n" + "\n".join(lines) + "\n" + text[end:])


def markdown(table: list[dict], seeds: list[int]) -> list[str]:
    def f(x):
        return "-" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)

    lines = [f"Held-out seeds {', '.join(map(str, seeds))}:", "",
             "| log written by | interval | signals in the log | recall | recall, faults that did harm | "
             "false warnings / 1k healthy steps | median lead (steps) |", "|---|---|---|---|---|---|---|"]
    for row in table:
        lines.append(f"| {row['writer']} | {row['interval']} | {row['signals']} | {f(row['recall'])} | "
                     f"{f(row['recall_harmful'])} | {f(row['false_warnings_per_1k'])} | {f(row['median_lead_steps'])} |")
    return lines


if __name__ == "__main__":
    main()
