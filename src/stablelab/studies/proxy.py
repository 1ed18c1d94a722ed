"""`stablelab proxy`: the small-scale proxy study (Wortsman et al. 2023, arXiv 2309.14322).

Sweep LR x width (x depth) x variant x seed on the reference transformer, store every run, then
analyse (LR sensitivity, best / largest stable LR, attention-logit prediction) and report.
Rerunning the same command resumes: finished runs (with a `done` marker) are not redone."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from stablelab import config
from stablelab.analysis.prediction import DEFAULT_LEVEL, forecast, validate
from stablelab.analysis.seeding import median_interval_width, seeds_for
from stablelab.analysis.proxy_curvature import grad_rms_table, reference_lr, warmup_curvature
from stablelab.analysis.proxy_summary import findings, summarize
from stablelab.config import Runtime, by, csv, each, non_negative, one_of, positive, setting
from stablelab.data.corpus import BUILTIN, load_corpus

from stablelab.models.architectures import MODELS, PRECISIONS, check_model, count_model_parameters, get_model
from stablelab.models.variants import VARIANTS, get_variant
from stablelab.report.proxy_outcomes import backtest_line, validation_line
from stablelab.report.proxy_report import write_proxy_report
from stablelab.run.grid import ProxyGrid, axis_label
from stablelab.run.proxy_run import ProxyRunConfig
from stablelab.monitor.signal_registry import layer_column
from stablelab.store.query import metrics_table, query
from stablelab.studies.command import Command
from stablelab.studies.proxy_checks import SWEEP_FILE, check_out, check_runs_fit, prepare_out  # noqa: F401
from stablelab.studies.proxy_sweep import RUNS_DIR, run_sweep
from stablelab.sweep.executor import default_workers

PAPER_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # the paper's grid
_RUN = ProxyRunConfig()  # the per-run defaults are written once, in ProxyRunConfig


def _optimizers() -> tuple[str, ...]:
    from stablelab.optim import available

    return tuple(available())


@dataclass(frozen=True)
class ProxySettings:
    """The proxy study's settings: the grid's axes and the run recipe (CLI flags derive from these)."""

    PRESETS: ClassVar[dict] = {
        "default": ({}, "the settings below"),
        # Output-logit divergence needs weight decay 0 and long training at high LR (paper 3.2):
        # the CPU-sized setting where it would show first; docs/proxy.md says what it shows.
        "logit-divergence": ({"widths": "32,64", "lrs": "1e-1,3e-1,1", "variants": "qk_norm,qk_norm+z_loss",
                              "weight_decay": "0", "steps": 2000, "log_every": 20},
                             "weight decay 0, 2000 steps, LR 0.1-1"),
        # High LRs, 400 steps: baseline runs go non-finite from lr 1 at widths 128 and 256 (from 3 at
        # width 64); qk-layernorm runs train at every LR up to 3 (docs/proxy.md, "Measured").
        "divergence": ({"widths": "64,128,256", "lrs": "1e-1,3e-1,1,2,3", "variants": "baseline,qk_norm",
                        "steps": 400},
                       "LR 0.1-3, 400 steps: baseline diverges at high LR, qk_norm does not"),
        # The paper's figure 1 shape by width: baseline LR sensitivity grows with width (it diverges
        # from lr 1 at width 128), qk_norm's stays nearly flat. Depth does not do it on CPU (docs).
        "width-sensitivity": ({"widths": "32,64,128", "lrs": "1e-2,3e-2,1e-1,3e-1,1,2",
                               "variants": "baseline,qk_norm", "steps": 400},
                              "LR 0.01-2, widths 32-128, 400 steps: baseline LR sensitivity grows with width"),
        "quick": ({"widths": "32,64", "lrs": "1e-3,1e-2,1e-1", "variants": "baseline,qk_norm", "steps": 100},
                  "a minute-long look: 2 widths, 3 LRs, 2 variants"),
    }

    # Four widths: the backtest (256 from 32-128) can then fit the same curve as the forecast.
    widths: tuple[int, ...] = setting((32, 64, 128, 256), "comma-separated model widths (3 or more: the "
                                      "study backtests itself and calibrates its intervals)", parse=csv(int),
                                      check=each(positive))
    model: str = setting("reference", f"architecture: {', '.join(MODELS)}", check=by(get_model))
    depth: tuple[int, ...] = setting((_RUN.depth,), "number of layers, or a comma-separated list to sweep depth",
                                     parse=csv(int), check=each(positive))
    depths: tuple[int, ...] = setting((), "comma-separated depths to sweep (same as --depth; wins over it)",
                                      parse=csv(int), check=lambda v: each(positive)(v) if v else None)
    lrs: tuple[float, ...] = setting(PAPER_LRS, "comma-separated peak learning rates (the paper's grid)",
                                     parse=csv(float), check=each(lambda lr: None if lr > 0 else
                                                                   f"learning rates must be positive, got {lr:g}"))
    variants: tuple[str, ...] = setting(("baseline", "qk_norm", "z_loss", "qk_norm+z_loss"),
                                        f"comma-separated mitigations from: {', '.join(VARIANTS)}",
                                        parse=csv(str), check=each(by(get_variant)))
    optimizer: tuple[str, ...] = setting((_RUN.optimizer,), "comma-separated optimizer names "
                                         "(see stablelab.optim.available())", parse=csv(str),
                                         check=each(one_of(_optimizers)))
    steps: int = setting(_RUN.steps, "training steps per run", check=positive)
    seeds: int = setting(1, "number of seeds per grid point", check=positive)
    seeds_when_loose: int = setting(2, "seeds per grid point when the one-seed backtest's median final-loss "
                                    "interval is wider than 10% of the loss (1: never add seeds)",
                                    check=positive, fingerprint=False)
    batch_size: int = setting(_RUN.batch_size, "sequences per step", check=positive)
    seq_len: int = setting(_RUN.seq_len, "bytes per sequence", check=positive)
    weight_decay: tuple[float, ...] = setting((_RUN.weight_decay,), "independent weight decay, or a "
                                              "comma-separated list to sweep", parse=csv(float),
                                              check=each(non_negative))
    warmup: tuple[float, ...] = setting((_RUN.warmup_fraction,), "warm-up fraction of the steps, or a "
                                        "comma-separated list to sweep (0,0.01,0.1)", parse=csv(float),
                                        check=each(lambda v: None if 0 <= v < 1 else f"must be in [0, 1), got {v:g}"))
    eps: tuple[float, ...] = setting((_RUN.eps,), "AdamW eps, or a comma-separated list to sweep",
                                     parse=csv(float), check=each(non_negative))
    precision: tuple[str, ...] = setting(("fp32",), f"comma-separated linear-layer precisions from: "
                                         f"{', '.join(PRECISIONS)} (int8: 8-bit weights and activations; "
                                         "int4: 4-bit weights, 8-bit activations; fake-quantised)",
                                         parse=csv(str), check=each(one_of(tuple(PRECISIONS))))
    mup_simple: bool = setting(_RUN.mup_simple, "muParam-simple: scale hidden LRs by base_width / width")
    mup_sweep: bool = setting(False, "sweep muParam-simple off and on (an axis)")
    log_every: int = setting(_RUN.log_every, "log metrics every N steps", check=positive)
    sharpness_every: int = setting(0, "preconditioned-sharpness check every N steps during the first "
                                   "--sharpness-steps (Gilmer et al. 2022, warm-up against curvature; 0: none)",
                                   check=non_negative)
    sharpness_steps: int = setting(100, "the first steps the sharpness checks cover", check=positive)
    prediction_step: int = setting(40, "early step whose layer-0 attention logit feeds the prediction",
                                   check=positive, fingerprint=False)
    predict_width: int = setting(1024, "width to extrapolate to", check=positive, fingerprint=False)
    validate_width: int = setting(0, "after the study, train this real width at the grid's LRs and check "
                                  "every prediction against it (0: no check)", check=non_negative,
                                  fingerprint=False)
    validate_lrs: tuple[float, ...] = setting((), "with --validate-width: train only these of the grid's LRs "
                                              "(the best LR and LR sensitivity are then not checked)",
                                              parse=csv(float), fingerprint=False)
    interval: float = setting(DEFAULT_LEVEL, "level of the prediction intervals (calibrated on the study's own "
                              "backtest)", check=lambda v: None if 0.5 <= v < 1 else
                              f"must be in [0.5, 1), got {v:g}", fingerprint=False)
    corpus: str = setting(BUILTIN, "text file or folder (default: the Python stdlib's source)")

    def check(self) -> str | None:
        check_model(self.model, self.variants, self.widths + ((self.validate_width,) if self.validate_width else ()),
                    _RUN.d_head)
        if self.validate_width and self.validate_width in self.widths:
            return f"--validate-width {self.validate_width} is one of the grid's widths; pick a larger one"
        if self.validate_lrs and not self.validate_width:
            return "--validate-lrs needs --validate-width"
        stray = [lr for lr in self.validate_lrs if not any(math.isclose(lr, g) for g in self.lrs)]
        if stray:
            return (f"--validate-lrs {','.join(f'{v:g}' for v in stray)} not in the grid's --lrs "
                    f"({','.join(f'{v:g}' for v in self.lrs)})")
        if self.corpus != BUILTIN and not Path(self.corpus).expanduser().exists():
            return f"corpus not found: {self.corpus}"
        return None


def grid_for(settings: ProxySettings, device: str = "cpu", model_fn=None,
             widths: tuple[int, ...] | None = None, lrs: tuple[float, ...] | None = None) -> ProxyGrid:
    """The sweep grid of these settings: every run copies the recipe and changes its axes."""
    corpus = settings.corpus
    if corpus != BUILTIN:
        corpus = str(Path(corpus).expanduser().resolve())
    base = replace(_RUN, steps=settings.steps, batch_size=settings.batch_size, seq_len=settings.seq_len,
                   corpus=corpus, log_every=settings.log_every, device=device,
                   sharpness_every=settings.sharpness_every, sharpness_steps=settings.sharpness_steps,
                   model="custom" if model_fn else settings.model)
    axes = (("warmup_fraction", settings.warmup), ("eps", settings.eps), ("weight_decay", settings.weight_decay),
            ("mup_simple", (False, True) if settings.mup_sweep else (settings.mup_simple,)),
            ("precision", settings.precision))
    return ProxyGrid(widths=widths or settings.widths, depths=settings.depths or settings.depth, lrs=lrs or settings.lrs,
                     variants=settings.variants, seeds=tuple(range(settings.seeds)),
                     optimizers=settings.optimizer, base=base, axes=axes).validate()


# Settings added after sweeps were stored: left out of the fingerprint at their defaults (and one
# weight decay stored as a number), so a sweep.json written before them still resumes.
LATER_SETTINGS = {"model": "reference", "depths": [], "warmup": [_RUN.warmup_fraction], "eps": [_RUN.eps],
                  "precision": ["fp32"], "mup_sweep": False, "sharpness_every": 0, "sharpness_steps": 100}


def sweep_fingerprint(settings: ProxySettings, grid: ProxyGrid) -> dict:
    """What defines the sweep's results: the settings' fingerprint and the per-run recipe."""
    fp = config.fingerprint(replace(settings, corpus=grid.base.corpus))
    for name, default in LATER_SETTINGS.items():
        if fp.get(name) == default:
            fp.pop(name)
    if len(fp["weight_decay"]) == 1:
        fp["weight_decay"] = fp["weight_decay"][0]
    return {**fp, "run": grid.fingerprint()["run"]}




def early_attention_logits(runs_dir: Path, step: int) -> dict[str, float]:
    """run_id -> layer-0 max attention logit at the logged step nearest to `step` (DuckDB query)."""
    column = layer_column("attn_logit_max_l", 0)
    table = query(runs_dir, f"SELECT run, arg_min({column}, abs(step - {int(step)})) AS z FROM metrics "
                            f"WHERE {column} IS NOT NULL GROUP BY run").to_pylist()
    return {row["run"]: row["z"] for row in table}


def parameter_count(grid: ProxyGrid, width: int, model_fn=None, depth: int | None = None) -> int:
    """Parameters of the grid's first variant at `width` (meta device: no weights allocated)."""
    b, variant = grid.base, grid.variants[0]
    depth = grid.depths[0] if depth is None else depth
    if model_fn is None:
        return count_model_parameters(b.model, width, depth, variant, b.seq_len, b.d_head)
    import torch

    try:
        with torch.device("meta"):
            return sum(p.numel() for p in model_fn(width, depth, variant).parameters())
    except Exception:  # noqa: BLE001 - a user's model that cannot be built on meta: build it for real
        return sum(p.numel() for p in model_fn(width, depth, variant).parameters())


def _by_depth(grid: ProxyGrid, width: int, model_fn) -> dict[int, int]:
    return {d: parameter_count(grid, width, model_fn, d) for d in grid.depths}


def curvature_readings(runs_dir: Path, results: list[dict], lrs: list[float]) -> dict:
    """summary["warmup_curvature"] (runs with sharpness checks) and summary["grad_rms"] (gradient RMS
    per weight matrix of the first variant at the grid's LR nearest 1e-2), when there is data."""
    out = {}
    curvature = warmup_curvature(results)
    if curvature:
        out["warmup_curvature"] = curvature
    lr = reference_lr(lrs)
    chosen = {r["run_id"] for r in results if r["lr"] == lr and r.get("param_numels")}
    if chosen:
        rows: dict[str, list[dict]] = {}
        for row in metrics_table(runs_dir).to_pylist():
            if row["run"] in chosen:
                rows.setdefault(row["run"], []).append(row)
        table = grad_rms_table(results, rows, lr)
        if table:
            out["grad_rms"] = {"lr": lr, "runs": table}
    return out


def analyse_and_report(out: Path, grid: ProxyGrid, results: list[dict], settings: ProxySettings,
                       sweep_seconds: float | None = None, model_fn=None,
                       held_out: list[dict] | None = None, seeding: dict | None = None) -> dict:
    """Summary, findings and report; `held_out`: the runs of --validate-width, checked against the
    prediction from `results` (they are not part of the fits); `seeding`: whether seeds were added."""
    width = settings.predict_width
    sizes = {w: parameter_count(grid, w, model_fn) for w in (*grid.widths, width)}
    prediction = {"width": width, "n_params": sizes[width], "step": settings.prediction_step,
                  "sizes": {str(w): n for w, n in sizes.items()},
                  "n_params_by_depth": {str(d): n for d, n in _by_depth(grid, width, model_fn).items()}}
    early = early_attention_logits(out / RUNS_DIR, settings.prediction_step)
    summary = summarize(results, early, list(grid.lrs), list(grid.depths), prediction, settings.interval)
    swept = grid.swept()
    if swept:
        summary["axes"] = {name: {str(v): axis_label(name, v) for v in values} for name, values in swept}
    if held_out:
        w = settings.validate_width
        checked = validate(results, held_out, early, _by_depth(grid, w, model_fn), settings.interval,
                           summary["prediction"]["models"])
        summary["validation"] = {
            "width": w, "n_params": parameter_count(grid, w, model_fn), "n_runs": len(held_out),
            "from_widths": list(grid.widths), "step": settings.prediction_step,
            "lrs": sorted({r["lr"] for r in held_out}), **checked}
    summary.update(curvature_readings(out / RUNS_DIR, results, list(grid.lrs)))
    if seeding:
        summary["seeding"] = seeding
    lines = findings(summary)
    if seeding and seeding.get("reason"):
        lines.append(f"Seeds added: {seeding['reason']}.")
    if summary.get("backtest"):
        lines.append(backtest_line(summary))
    if held_out:
        lines.append(validation_line(summary))
    corpus = load_corpus(grid.base.corpus).describe()
    meta = {
        "subtitle": f"{len(results)} runs of model {grid.base.model}, {grid.base.steps} steps each, corpus "
                    f"{corpus['source']} ({corpus['train_bytes'] / 1e6:.1f} MB train, Python "
                    f"{corpus['python_version']})"
                    + f", {sum(r.get('wall_s') or 0 for r in results):.0f} s of training in all"
                    + (f" (this invocation {sweep_seconds:.0f} s; finished runs are read back)"
                       if sweep_seconds is not None else ""),
        "settings": {**config.to_json(settings), "corpus": corpus, "device": grid.base.device},
        "single_optimizer": len(grid.optimizers) == 1,
        "sweep_seconds": sweep_seconds,
    }
    return write_proxy_report(out, summary, lines, meta)


def _validation_lrs(settings: ProxySettings) -> tuple[float, ...]:
    """--validate-lrs spelled as the grid spells them (so the check's run ids match the grid's LRs)."""
    if not settings.validate_lrs:
        return settings.lrs
    return tuple(g for g in settings.lrs if any(math.isclose(g, v) for v in settings.validate_lrs))


def _seeds_where_they_pay(out: Path, settings: ProxySettings, grid: ProxyGrid, results: list[dict],
                          runtime: Runtime, model_fn=None) -> tuple:
    """With 3+ widths and --seeds-when-loose above --seeds: the study's backtest on what ran; when
    its final-loss intervals are too wide to plan on (analysis.seeding), the grid again with more
    seeds (finished runs are kept). Returns (settings, grid, results, seeding) as the study goes on."""
    if settings.seeds_when_loose <= settings.seeds or len(grid.widths) < 3:
        return settings, grid, results, None
    early = early_attention_logits(out / RUNS_DIR, settings.prediction_step)
    backtest = forecast(results, early, _by_depth(grid, settings.predict_width, model_fn), settings.interval)["backtest"]
    seeds, reason = seeds_for(backtest, settings.seeds, settings.seeds_when_loose)
    seeding = {"asked": settings.seeds, "seeds": seeds, "reason": reason,
               "backtest_interval_width": median_interval_width(backtest["points"]) if backtest else None}
    if reason is None:
        return settings, grid, results, seeding
    print(f"adding seeds: {reason}")
    settings = replace(settings, seeds=seeds)
    grid = grid_for(settings, runtime.device, model_fn)
    results = run_sweep(grid, out, runtime.workers, runtime.address, progress=runtime.progress, model_fn=model_fn,
                        label="added seeds")
    return settings, grid, results, seeding


def run_study(settings: ProxySettings, runtime: Runtime, model_fn=None) -> dict:
    """Sweep, analyse, report (the CLI's `main` and the Python API's `study`); returns the paths
    and findings of the report. Rerunning with the same settings resumes."""
    out = runtime.out
    check_out(out)
    grid = grid_for(settings, runtime.device, model_fn)
    corpus = load_corpus(grid.base.corpus)  # fail fast on an unreadable or tiny corpus
    workers = 1 if runtime.address else (runtime.workers or default_workers())
    check_runs_fit(grid.runs(), corpus, grid.base.device, workers)
    prepare_out(out, sweep_fingerprint(settings, grid))
    config.write_config(out, settings, runtime)
    started = time.time()
    n_runs = len(grid.runs())
    axes = "".join(f" x {len(values)} {name}" for name, values in grid.swept())
    print(f"proxy study of {grid.base.model}: {n_runs} runs ({len(grid.variants)} variants x "
          f"{len(grid.widths)} widths x {len(grid.depths)} depths x {len(grid.lrs)} LRs x {len(grid.seeds)} seeds"
          f"{' x ' + str(len(grid.optimizers)) + ' optimizers' if len(grid.optimizers) > 1 else ''}{axes}), "
          f"{runtime.workers or default_workers() if not runtime.address else 'cluster'} workers -> {out}")
    results = run_sweep(grid, out, runtime.workers, runtime.address, progress=runtime.progress, model_fn=model_fn)
    settings, grid, results, seeding = _seeds_where_they_pay(out, settings, grid, results, runtime, model_fn)
    held_out = None
    if settings.validate_width:
        check_grid = grid_for(settings, runtime.device, model_fn, widths=(settings.validate_width,),
                              lrs=_validation_lrs(settings))
        print(f"prediction check: {len(check_grid.runs())} runs at width {settings.validate_width}")
        held_out = run_sweep(check_grid, out, runtime.workers, runtime.address, progress=runtime.progress,
                             model_fn=model_fn, label="prediction check")
    sweep_s = time.time() - started
    paths = analyse_and_report(out, grid, results, settings, sweep_seconds=sweep_s, model_fn=model_fn,
                               held_out=held_out, seeding=seeding)
    print(f"done in {sweep_s:.0f} s. Report: {paths['report']}")
    for line in paths["findings"]:
        print(f"  - {line}")
    return paths


def main(settings: ProxySettings, runtime: Runtime) -> int:
    """Sweep, analyse, report; rerunning with the same settings resumes."""
    run_study(settings, runtime)
    return 0


COMMAND = Command(ProxySettings, main, runtime=("out", "device", "progress", "workers", "address"))
