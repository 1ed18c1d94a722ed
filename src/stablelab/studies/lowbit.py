"""`stablelab lowbit`: binary networks, 8-bit optimizer states and 4-bit training, read beside the papers.

Three sections, every run one store folder under --out/runs (a finished run with the same
configuration is read back on a rerun, so an interrupted study resumes):

  binary    an MLP on digits with two binary hidden layers (first and last layer full precision),
            STE against ReSTE at several o (annealed 1 -> o per epoch, the official schedule),
            several seeds: test accuracy, estimating error at o, gradient stability (Wu et al. 2023).
  states8bit the reference transformer (`run.proxy_run.train`, the proxy recipe) with AdamW's
            moments in float32 and in 8 bits (Dettmers et al. 2022) on an LR grid: loss curves and
            LR sensitivity side by side, differences against the seed spread; state bytes per parameter.
  int4      the same model fake-quantised (`nn.quantize_model`, weights and activations) against
            float32 with AdamW, SPAM and Stable-SPAM on an LR grid (Huang et al. 2025): LR sensitivity,
            the spread of gradient norms, steps to reach fp32 AdamW's loss.

Writes summary.json, summary.md and report.html into --out.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, replace
from pathlib import Path

from stablelab.analysis.lowbit import best_reste_beats_ste, binary_table, states_comparison, sweep_table
from stablelab.config import Runtime, at_least, between, csv, each, positive, setting
from stablelab.run.progress import progress_bar
from stablelab.studies.command import Command
from stablelab.studies.lowbit_runs import (binary_run, build_proxy_model, proxy_config, proxy_run,
                                           state_bytes_per_parameter)
from stablelab.io import atomic_write_bytes, atomic_write_json

_lrs = each(positive)


@dataclass(frozen=True)
class LowbitSettings:
    """The full study's defaults; --quick swaps in QUICK (one seed, two LRs, few steps: about a minute)."""

    quick: bool = setting(False, "small grids and few steps (a smoke run of every section)")
    sections: tuple[str, ...] = setting(("binary", "states8bit", "int4"), "comma-separated sections to run",
                                        parse=csv(str), check=each(lambda s: None if s in ("binary", "states8bit",
                                                                                           "int4")
                                                                   else f"unknown section {s!r}; known: binary, "
                                                                        "states8bit, int4"))
    reste_o: tuple[float, ...] = setting((1.0, 2.0, 3.0, 5.0), "ReSTE final o values (o >= 1; STE always runs)",
                                         parse=csv(float), check=each(at_least(1)))
    binary_seeds: int = setting(3, "seeds per estimator (binary section)", check=at_least(1))
    binary_epochs: int = setting(30, "epochs over the digits training set", check=at_least(1))
    binary_hidden: int = setting(256, "width of the two binary hidden layers", check=at_least(2))
    binary_lr: float = setting(1e-3, "Adam learning rate (binary section)", check=positive)
    width: int = setting(64, "reference transformer width (states8bit, int4)", check=at_least(8))
    depth: int = setting(2, "reference transformer depth", check=at_least(1))
    steps: int = setting(200, "training steps per transformer run", check=at_least(10))
    states_lrs: tuple[float, ...] = setting((1e-3, 3e-3, 1e-2, 3e-2, 1e-1), "peak LRs, states8bit section",
                                            parse=csv(float), check=_lrs)
    states_seeds: int = setting(2, "seeds per LR, states8bit section", check=at_least(1))
    int4_lrs: tuple[float, ...] = setting((1e-3, 3e-3, 1e-2, 3e-2, 1e-1), "peak LRs, int4 section",
                                          parse=csv(float), check=_lrs)
    int4_seeds: int = setting(2, "seeds per cell, int4 section", check=at_least(1))
    int4_optimizers: tuple[str, ...] = setting(("adamw", "spam", "stable_spam"), "optimizers, int4 section",
                                               parse=csv(str))
    weight_bits: int = setting(4, "weight bits of the quantised runs (2..8)", check=between(2, 8))
    activation_bits: int = setting(8, "activation bits of the quantised runs (2..8)", check=between(2, 8))
    group_size: int = setting(32, "quantisation group size (must divide every quantised layer's inputs)",
                              check=positive)
    seed: int = setting(0, "first seed")

    def check(self) -> str | None:
        from stablelab.optim import available

        unknown = [n for n in self.int4_optimizers if n not in available()]
        if unknown:
            return f"--int4-optimizers: unknown {', '.join(unknown)}; known: {', '.join(available())}"
        return None


QUICK = {"reste_o": (3.0,), "binary_seeds": 1, "binary_epochs": 8, "states_lrs": (1e-3, 1e-2), "states_seeds": 1,
         "int4_lrs": (1e-3, 1e-2), "int4_seeds": 1, "steps": 60}


def effective(settings: LowbitSettings) -> LowbitSettings:
    return replace(settings, **{k: v for k, v in QUICK.items()}) if settings.quick else settings


def _check_quantisation(settings: LowbitSettings) -> None:
    """Quantise a throw-away model now, so that a group size that divides no layer fails before any run."""
    from stablelab.nn import quantize_model

    model = build_proxy_model(proxy_config(settings, "adamw", "fp32", 1e-3, 0, "cpu"))
    quantize_model(model, weight_bits=settings.weight_bits, activation_bits=settings.activation_bits,
                   group_size=settings.group_size, exclude=("head",))


def main(settings: LowbitSettings, runtime: Runtime) -> int:
    out = Path(runtime.out)
    summary = run_study(settings, out, device=runtime.device, progress=runtime.progress)
    print(f"wrote {out / 'report.html'}, {out / 'summary.json'}, {out / 'summary.md'} in "
          f"{summary['wall_seconds']:.0f} s")
    return 0


COMMAND = Command(LowbitSettings, main, runtime=("out", "device", "threads", "progress"),
                  runtime_defaults={"threads": 1})
configure, run = COMMAND.configure, COMMAND.run


def run_study(settings: LowbitSettings, out: Path, device: str = "cpu", progress: bool = True) -> dict:
    """Every section's runs (resumable), then summary.json, summary.md and report.html in `out`."""
    s = effective(settings)
    if "int4" in s.sections:
        _check_quantisation(s)
    out.mkdir(parents=True, exist_ok=True)
    precision = f"int{s.weight_bits}"
    seeds = lambda n: range(s.seed, s.seed + n)  # noqa: E731
    binary_jobs = [("ste", 1.0, seed) for seed in seeds(s.binary_seeds)]
    binary_jobs += [("reste", o, seed) for o in s.reste_o for seed in seeds(s.binary_seeds)]
    states_jobs = [(opt, "fp32", lr, seed) for lr in s.states_lrs for seed in seeds(s.states_seeds)
                   for opt in ("adamw", "adamw8bit")]
    int4_jobs = [(opt, prec, lr, seed) for opt in s.int4_optimizers for prec in ("fp32", precision)
                 for lr in s.int4_lrs for seed in seeds(s.int4_seeds)]
    jobs = {"binary": binary_jobs, "states8bit": states_jobs, "int4": int4_jobs}
    total = sum(len(jobs[name]) for name in s.sections)
    started = time.perf_counter()
    results: dict[str, list] = {name: [] for name in jobs}
    proxy_done: dict[tuple, dict] = {}
    with progress_bar("lowbit", total, unit="runs", enabled=progress) as bar:
        if "binary" in s.sections:
            for estimator, o, seed in binary_jobs:
                bar.update(description=f"binary {estimator} o={o:g} seed {seed}")
                results["binary"].append(binary_run(s, estimator, o, seed, out / "runs" / "binary", device))
                bar.advance(1)
        for name in ("states8bit", "int4"):
            if name not in s.sections:
                continue
            for optimizer, prec, lr, seed in jobs[name]:
                bar.update(description=f"{name} {optimizer} {prec} lr {lr:g} seed {seed}")
                key = (optimizer, prec, lr, seed)
                if key not in proxy_done:  # fp32 AdamW serves both sections
                    proxy_done[key] = proxy_run(s, optimizer, prec, lr, seed, out / "runs" / "proxy", device)
                results[name].append(proxy_done[key])
                bar.advance(1)
    wall = time.perf_counter() - started
    summary = compose_summary(s, results, wall, device)
    atomic_write_json(out / "summary.json", summary)
    from stablelab.report.lowbit_figures import summary_markdown, write_page

    atomic_write_bytes(out / "summary.md", summary_markdown(summary).encode())
    write_page(out / "report.html", summary, results)
    return summary


def compose_summary(s: LowbitSettings, results: dict[str, list], wall: float, device: str) -> dict:
    """summary.json: the settings, one record per run (curves left to the store), and the tables."""
    light = lambda r: {k: v for k, v in r.items() if k not in ("steps", "losses", "grad_norms")}  # noqa: E731
    summary = {"command": "lowbit", "settings": dataclasses.asdict(s), "wall_seconds": wall, "device": device}
    if results["binary"]:
        table = binary_table(results["binary"])
        summary["binary"] = {"runs": results["binary"], "table": table, "reste_vs_ste": best_reste_beats_ste(table),
                             "epochs": s.binary_epochs, "hidden": s.binary_hidden, "lr": s.binary_lr}
    if results["states8bit"] or "states8bit" in s.sections:
        bytes_per_param = state_bytes_per_parameter(s)
        summary["states8bit"] = {"bytes_per_param": bytes_per_param, "runs": [light(r) for r in results["states8bit"]],
                                 "comparison": states_comparison(results["states8bit"]),
                                 "sweep": sweep_table(results["states8bit"])}
    if results["int4"]:
        summary["int4"] = {"precision": f"int{s.weight_bits}", "weight_bits": s.weight_bits,
                           "activation_bits": s.activation_bits, "group_size": s.group_size,
                           "runs": [light(r) for r in results["int4"]], "sweep": sweep_table(results["int4"])}
    return summary

