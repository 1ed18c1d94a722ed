"""Re-score a finished proxy study's forecasts under other loss curves, without training anything
(issue 25): its backtest (the largest grid width predicted from the smaller ones) and, where the
study was run with --validate-width, its check against the real larger width, scored with the
issue's targets (coverage, median final-loss interval width, median absolute and signed error,
best LR exact / within one step / median regret).

    .venv/bin/python benchmarks/forecast_variants.py STUDY [--curves 'chosen;lr_shift;mean:lr_shift,saturating']
                     [--seeds 0] [--window 3] [--floor] [--points] [--json FILE]
    .venv/bin/python benchmarks/forecast_variants.py STUDY --export FILE [--add OTHER_STUDY ...]

STUDY is a `stablelab proxy --out` folder, or a file written by `--export`: the few fields per run
the forecast reads (no metrics, no weights; about 100 KB for 300 runs), so a study's figures can be
re-scored where its folder is gone (benchmarks/studies/ holds the ones docs/proxy.md quotes). A curve is any of `analysis.extrapolation.LOSS_MODELS`,
`chosen` (what the study's backtest chose), or `mean:a,b` (the geometric mean of their forecasts).
Pick a method on one study and judge it on another: a curve chosen by its check's score on the same
study has been tuned on that check.

`--points` also prints every final-loss point of each check (forecast, observed, error, interval width).

`--floor` (2+ seeds) prints the check's seed-noise floor for the chosen curve: the forecast refitted on
cell means perturbed by their own seed noise (a parametric bootstrap, 200 draws), plus the check's
own seed noise; what an exact-in-expectation forecast of this study would still score. A check far
above its floor is limited by the curve, not by the seeds.

`--window K` fits every fold on the K largest widths below its target (`prediction.forecast(window=)`): with
4 widths and K = 3 the target is fitted on the same number of widths as the backtest (docs/proxy.md).

`--seeds 0` re-scores the study as if it had run only those seeds (a `--seeds 2` study read as the
one-seed study it contains). With two or more seeds at the check width the script also prints the
check's own noise floor: per LR, the seed-to-seed sd of log final loss at that width, and what a
forecast that knew the seed mean exactly would score against one seed's run (median |error| about
0.674 sd for normal noise; a 90% interval at least 2 x 1.645 sd wide)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


# the fields of a run's result.json that the forecast reads (analysis.prediction.rows_by_group)
KEPT = ("run_id", "model", "variant", "width", "depth", "lr", "seed", "optimizer", "tag", "mup_simple",
        "final_loss", "init_loss", "diverged", "n_params", "steps_done")
FORMAT = "stablelab.forecast_inputs/1"


def read_study(out: Path) -> tuple[dict, list[dict], dict]:
    """(summary's prediction and validation headers, results, early logits) of a study folder or export."""
    from stablelab.io import read_json_exact

    if out.is_file():
        data = read_json_exact(out)
        if data.get("format") != FORMAT:
            raise SystemExit(f"{out}: not a forecast-inputs export ({FORMAT}); pass a study folder or a file "
                             "written by --export")
        return data["summary"], data["results"], data["early"]
    from stablelab.store.run_store import load_result
    from stablelab.studies.proxy import RUNS_DIR, early_attention_logits

    if not (out / "summary.json").exists():
        raise SystemExit(f"{out}: no summary.json; is the study finished?")
    summary = json.loads((out / "summary.json").read_text())
    results = [load_result(d) for d in sorted((out / RUNS_DIR).iterdir()) if (d / "result.json").exists()]
    return summary, results, early_attention_logits(out / RUNS_DIR, summary["prediction"]["step"])


def export(out: Path, path: Path, add: list[Path] = ()) -> None:
    """Write the forecast's inputs of study `out` to `path` (atomically; NaN losses kept), with the runs of
    the studies in `add` appended (more widths of the same setting, e.g. `--widths 16` run afterwards):
    they must read the attention logit at the same step and share no run id."""
    from stablelab.io import atomic_write_json_exact

    summary, results, early = read_study(out)
    for other in add:
        extra_summary, extra, extra_early = read_study(other)
        if extra_summary["prediction"]["step"] != summary["prediction"]["step"]:
            raise SystemExit(f"{other}: attention logits read at step {extra_summary['prediction']['step']}, "
                             f"not {summary['prediction']['step']}")
        clash = {r["run_id"] for r in results} & {r["run_id"] for r in extra}
        if clash:
            raise SystemExit(f"{other}: run ids already in {out}: {', '.join(sorted(clash)[:3])}")
        results, early = results + extra, {**early, **extra_early}
    head = {"prediction": {k: summary["prediction"][k] for k in ("models", "level", "n_params_by_depth", "step")}}
    if summary.get("validation"):
        head["validation"] = {k: summary["validation"].get(k) for k in ("width", "n_params")}
    atomic_write_json_exact(path, {"format": FORMAT, "summary": head,
                                   "results": [{k: r.get(k) for k in KEPT} for r in results],
                                   "early": {r["run_id"]: early[r["run_id"]] for r in results if r["run_id"] in early}})


def load(out: Path, seeds: set[int] | None = None) -> dict:
    summary, results, early = read_study(out)
    if seeds is not None:
        results = [r for r in results if r.get("seed", 0) in seeds]
    check = summary.get("validation") or {}
    width = check.get("width")
    target = {int(k): v for k, v in summary["prediction"]["n_params_by_depth"].items()}
    return {"summary": summary, "train": [r for r in results if r["width"] != width],
            "held": [r for r in results if r["width"] == width], "width": width,
            "early": early,
            "target": target, "check_target": {d: check.get("n_params") for d in target} if width else None}


def figures(scored: dict) -> dict:
    """The issue's targets of one scored set of points (a backtest or a check)."""
    points, acc = scored["points"], scored["accuracy"]
    classes: dict = {}
    for p in points:
        if p.get("inside") is not None:
            c = classes.setdefault(p["quantity"], [0, 0])
            c[0] += bool(p["inside"])
            c[1] += 1
    widths = [(p["interval"][1] - p["interval"][0]) / p["predicted"] for p in points
              if p["quantity"] == "final_loss" and p.get("interval") and p["predicted"]]
    return {"inside": f"{sum(c[0] for c in classes.values())}/{sum(c[1] for c in classes.values())}",
            "by_class": {q: f"{a}/{b}" for q, (a, b) in classes.items()},
            "final_loss_interval_width": float(np.median(widths)) if widths else None,
            **{k: acc.get(k) for k in ("final_loss_median_abs_error", "final_loss_median_signed_error",
                                       "best_lr_exact", "best_lr_within_one", "best_lr_median_regret")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--curves", default="chosen;lr_shift;saturating;mean:lr_shift,saturating",
                        help="curves separated by ';'")
    parser.add_argument("--seeds", help="comma-separated seeds to keep (default: every seed)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--drift", action="store_true",
                        help="also score each curve with the target's bias moved by the transfer drift "
                             "(calibration.transfer_drift; an option under test)")
    parser.add_argument("--floor", action="store_true",
                        help="also print the check's seed-noise floor (2+ seeds; parametric bootstrap)")
    parser.add_argument("--window", type=int, help="each fit uses the K largest widths below its target "
                        "(default: every width)")
    parser.add_argument("--export", type=Path, help="write the study's forecast inputs to this file and stop")
    parser.add_argument("--add", type=Path, action="append",
                        help="with --export: append this study's runs too (more widths of the same setting)")
    parser.add_argument("--points", action="store_true",
                        help="also print every final-loss point of each check: forecast, observed, error, interval")
    args = parser.parse_args()
    if args.export:
        export(args.study, args.export, args.add or [])
        print(f"wrote {args.export}")
        return
    from stablelab.analysis.prediction import forecast, validate

    rows = []
    study = load(args.study, {int(v) for v in args.seeds.split(",")} if args.seeds else None)
    if study["held"]:
        print_noise_floor(study["held"], study["early"])
    chosen = study["summary"]["prediction"]["models"]
    level = study["summary"]["prediction"]["level"]
    print(f"{args.study}: the study chose {chosen}")
    print("| curve | scored on | inside | final loss inside | median final-loss interval width | median abs / signed "
          "error | best LR exact / within one | median regret |\n|---|---|---|---|---|---|---|---|")
    for curve, drift in [(c, d) for c in args.curves.split(";") for d in ((False, True) if args.drift else (False,))]:
        models = {**chosen, "final_loss": chosen["final_loss"] if curve == "chosen" else curve}
        bt = forecast(study["train"], study["early"], study["target"], level, models, window=args.window)["backtest"]
        name = curve + (" +drift" if drift else "")
        row = {"curve": name, "final_loss": models["final_loss"], **({"backtest": figures(bt)} if bt else {})}
        if study["width"]:
            checked = validate(study["train"], study["held"], study["early"], study["check_target"], level, models,
                               drift=drift, window=args.window)
            row["check"] = figures(checked)
        for part in ("backtest", "check"):
            if part in row:
                print(line(row["curve"], part, row[part]), flush=True)
        if args.points and study["width"]:
            print("\n".join(point_table(checked)))
        if args.floor and study["width"]:
            print("\n".join(floor_table(study, models["final_loss"], args.window)))
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def point_table(scored: dict) -> list[str]:
    """Markdown rows of a check's final-loss points: variant, LR, forecast, observed, error
    (observed / forecast - 1), interval width (relative to the forecast) and inside or not."""
    out = ["| variant | lr | forecast | observed | error | interval width | inside |", "|---|---|---|---|---|---|---|"]
    for p in scored["points"]:
        if p["quantity"] != "final_loss" or not p.get("interval") or not p["predicted"]:
            continue
        lo, hi = p["interval"]
        out.append(f"| {p['variant']} | {p['lr']:g} | {p['predicted']:.4f} | {p['observed']:.4f} | "
                   f"{100 * (p['observed'] / p['predicted'] - 1):+.1f}% | {100 * (hi - lo) / p['predicted']:.1f}% | "
                   f"{'yes' if p['inside'] else '**no**'} |")
    return out


def floor_table(study: dict, curve: str, window: int | None = None, draws: int = 200) -> list[str]:
    """Markdown rows of `analysis.noise_floor.seed_noise_floor`: per LR, the sd of the log forecast under
    seed noise alone (median over groups), the check's own noise, and the 90% interval width and median
    |error| that noise alone sets."""
    from stablelab.analysis.noise_floor import seed_noise_floor
    from stablelab.analysis.calibration import last_widths
    from stablelab.analysis.prediction import rows_by_group

    widths = sorted({r["width"] for r in study["train"]})
    floor = seed_noise_floor(rows_by_group(study["train"], study["early"]), rows_by_group(study["held"], study["early"]),
                             last_widths(widths, window), study["check_target"], study["width"], curve, draws)
    if floor is None:
        return ["(--floor needs 2 or more seeds)"]
    out = [f"Seed-noise floor of the check ({curve}, {floor['seeds']} seeds, {draws} draws):",
           "| lr | forecast sd | check sd | noise-only 90% width | noise-only median abs error |", "|---|---|---|---|---|"]
    out += [f"| {lr} | {100 * v['forecast_sd']:.2f}% | {100 * v['check_sd']:.2f}% | {100 * 3.29 * v['sd']:.1f}% | "
            f"{100 * 0.674 * v['sd']:.2f}% |" for lr, v in floor["by_lr"].items()]
    out.append(f"| median | | | {100 * floor['width_90']:.1f}% | {100 * floor['median_abs_error']:.2f}% |")
    return out


def print_noise_floor(held: list[dict], early: dict) -> None:
    from stablelab.analysis.cells import seed_spread_by_lr
    from stablelab.analysis.prediction import rows_by_group

    floor = seed_spread_by_lr(rows_by_group(held, early))
    if not floor:
        return
    print("The check's own seed noise (sd of log final loss between seeds at the check width); a forecast of the "
          "seed mean that were exact would still score, against one seed's run, a median |error| of about "
          "0.674 sd, and its 90% interval would be at least 3.29 sd wide:")
    print("| lr | sd | dof | exact forecast's median abs error vs one seed | narrowest 90% interval |\n|---|---|---|---|---|")
    for k in floor:
        f = floor[k]
        print(f"| {k} | {100 * f['sd']:.2f}% | {f['dof']} | {100 * 0.674 * f['sd']:.2f}% "
              f"| {100 * 3.29 * f['sd']:.1f}% |")


def line(curve: str, part: str, f: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    return (f"| {curve} | {part} | {f['inside']} | {f['by_class'].get('final_loss', '-')} | "
            f"{pct(f['final_loss_interval_width'])} | {pct(f['final_loss_median_abs_error'])} / "
            f"{pct(f['final_loss_median_signed_error'])} | {f['best_lr_exact']} / {f['best_lr_within_one']} | "
            f"{pct(f['best_lr_median_regret'])} |")


if __name__ == "__main__":
    main()
