"""Median optimizer step time: stablelab.optim vs torch's AdamW and pytorch-optimizer.

A model-shaped set of ~5M parameters in ~100 tensors (blocks of weight d x d, bias d, gain d) gets
fixed random gradients; every optimizer steps on it with its default settings. Steps are timed
round-robin (one step of each optimizer per round), so a loaded machine slows all of them alike;
the median over rounds is reported as a ratio to torch.optim.AdamW(foreach=True) and to torch's
fastest AdamW on the device (fused where available), both measured in the same run, and to
pytorch-optimizer's implementation of the same algorithm (its defaults and default path).

    .venv/bin/python benchmarks/optim_step.py                       # CPU, 1 thread, ~1-2 minutes
    .venv/bin/python benchmarks/optim_step.py --params 10e6 --tensors 100 --rounds 40 --json out.json
    .venv/bin/python benchmarks/optim_step.py --only SPAM,AdEMAMix          # a subset
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from stablelab import optim  # noqa: E402

# algorithm -> (our registry name, pytorch-optimizer class name, target ratio to AdamW(foreach=True))
ALGORITHMS = {
    "SPAM": ("spam", "SPAM", 2.0),
    "StableSPAM": ("stable_spam", "StableSPAM", 2.0),
    "AdaBelief": ("adabelief", "AdaBelief", 1.5),
    "DiffGrad": ("diffgrad", "DiffGrad", 1.5),
    "AdamP": ("adamp", "AdamP", 1.5),
    "LaProp": ("laprop", "LaProp", 1.5),
    "AdEMAMix": ("ademamix", "AdEMAMix", 1.5),
}

def make_parameters(n_params: float, n_tensors: int, device: torch.device, dtype: torch.dtype):
    """Blocks of (d x d weight, d bias, d gain) with d chosen so the total is ~n_params."""
    blocks = max(1, n_tensors // 3)
    d = int(round((-blocks + math.sqrt(blocks * blocks + 4 * blocks * n_params)) / (2 * blocks)))
    gen = torch.Generator().manual_seed(0)
    params, grads = [], []
    for _ in range(blocks):
        for shape in ((d, d), (d,), (d,)):
            params.append(torch.nn.Parameter((torch.randn(shape, generator=gen) * 0.02).to(device, dtype)))
            grads.append((torch.randn(shape, generator=gen) * 1e-3).to(device, dtype))
    return params, grads


def candidates(params, device: torch.device, only: set[str] | None = None):
    """(label, algorithm, kind, factory) for everything timed; kind in torch/ours/ours_foreach/theirs."""
    out = [("torch AdamW foreach", "AdamW", "torch", lambda: torch.optim.AdamW(params, foreach=True)),
           ("torch AdamW for-loop", "AdamW", "torch", lambda: torch.optim.AdamW(params, foreach=False))]
    try:
        torch.optim.AdamW(params, fused=True)
        out.append(("torch AdamW fused", "AdamW", "torch", lambda: torch.optim.AdamW(params, fused=True)))
    except (RuntimeError, TypeError):
        pass
    try:
        import pytorch_optimizer
    except ImportError:
        pytorch_optimizer = None
        print("pytorch-optimizer not installed: no comparison with it")
    for algorithm, (name, theirs, _) in ALGORITHMS.items():
        if only and algorithm not in only:
            continue
        out.append((f"stablelab {name}", algorithm, "ours", lambda name=name: optim.create(name, params)))
        other = "foreach" if device.type != "cuda" else "per-tensor"
        out.append((f"stablelab {name} ({other})", algorithm, "ours_other",
                    lambda name=name: optim.create(name, params, foreach=device.type != "cuda")))
        if pytorch_optimizer is not None:
            cls = getattr(pytorch_optimizer, theirs)
            out.append((f"pytorch-optimizer {theirs}", algorithm, "theirs", lambda cls=cls: cls(params)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=5e6, help="total parameters (default 5e6)")
    parser.add_argument("--tensors", type=int, default=99, help="number of tensors (default 99)")
    parser.add_argument("--rounds", type=int, default=25, help="timed steps per optimizer (default 25)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--only", help="comma-separated algorithms to time (default all), e.g. SPAM,AdEMAMix")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params, grads = make_parameters(args.params, args.tensors, device, getattr(torch, args.dtype))
    n = sum(p.numel() for p in params)
    print(f"{n / 1e6:.2f}M parameters in {len(params)} tensors, {args.dtype}, device {device}, "
          f"{args.threads} thread(s), torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def set_grads():
        with torch.no_grad():
            for p, g in zip(params, grads):
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)  # pytorch-optimizer edits gradients in place

    runs = []
    for label, algorithm, kind, factory in candidates(params, device,
                                                     set(args.only.split(",")) if args.only else None):
        optimizer = factory()
        stepper = optimizer.step
        for _ in range(args.warmup):
            set_grads()
            stepper()
        runs.append({"label": label, "algorithm": algorithm, "kind": kind, "step": stepper, "times": []})

    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task("timing steps", total=args.rounds)
        for _ in range(args.rounds):
            for run in runs:
                set_grads()
                sync()
                start = time.perf_counter()
                run["step"]()
                sync()
                run["times"].append(time.perf_counter() - start)
            progress.advance(task)

    for run in runs:
        run["median_ms"] = 1e3 * statistics.median(run.pop("times"))
        run.pop("step")
    by_label = {run["label"]: run["median_ms"] for run in runs}
    foreach_ms = by_label["torch AdamW foreach"]
    fastest_ms = min(v for k, v in by_label.items() if k.startswith("torch AdamW"))
    theirs_ms = {run["algorithm"]: run["median_ms"] for run in runs if run["kind"] == "theirs"}
    for run in runs:
        run["vs_adamw_foreach"] = run["median_ms"] / foreach_ms
        run["vs_fastest_adamw"] = run["median_ms"] / fastest_ms
        if run["algorithm"] in theirs_ms and run["kind"] != "theirs":
            run["vs_pytorch_optimizer"] = run["median_ms"] / theirs_ms[run["algorithm"]]
        if run["kind"] == "ours":
            target = ALGORITHMS[run["algorithm"]][2]
            run["target"] = f"<= {target:g}x foreach" + (", < pytorch-optimizer" if run["algorithm"] in theirs_ms else "")
            run["meets_target"] = run["vs_adamw_foreach"] <= target and run.get("vs_pytorch_optimizer", 0) < 1

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"optimizer step, median of {args.rounds} (ratios: lower is faster)")
    for column in ("optimizer", "ms", "/ AdamW foreach", "/ fastest AdamW", "/ pytorch-optimizer", "target met"):
        table.add_column(column, justify="left" if column == "optimizer" else "right")
    for run in runs:
        table.add_row(run["label"], f"{run['median_ms']:.2f}",
                      f"{run['vs_adamw_foreach']:.2f}",
                      f"{run['vs_fastest_adamw']:.2f}",
                      f"{run['vs_pytorch_optimizer']:.2f}" if "vs_pytorch_optimizer" in run else "",
                      {True: "yes", False: "NO"}.get(run.get("meets_target"), ""))
    Console(width=150).print(table)

    if args.json:
        payload = {"n_params": n, "n_tensors": len(params), "device": str(device), "dtype": args.dtype,
                   "threads": args.threads, "rounds": args.rounds, "torch": torch.__version__,
                   "load_average": os.getloadavg()[0], "runs": runs}
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
