"""Overhead of the stablelab monitor per training step, against the bare step, on the reference model.

    .venv/bin/python benchmarks/monitor_overhead.py                 # CPU, 1 thread
    .venv/bin/python benchmarks/monitor_overhead.py --device cuda   # the same on a GPU

Two copies of the same model and optimizer train side by side, in alternating blocks of steps (so
load from other processes hits both alike): one bare, one with `Monitor(...)` observing every
step. Blocks of `--block` steps (one sync window) alternate, A B then B A; the ratio reported
is the median over block pairs of monitored time / bare time (robust to load that drifts), and
the same over windows of one sync window of steps (`--block 1`: the copies alternate every step,
the least exposed to load that changes within a second); on
CPU the process's CPU-time ratio (total monitored / total bare) is reported beside it, since it
is nearly blind to other processes on a shared machine; and the attributed ratio, 1 + (time inside
`observe()` and the monitor's step hooks) / bare step time, which load from other processes barely
moves (CPU only: it times synchronous ops). Variants:
`default` (sync_every as given, default policy: reads 5 numbers per step for the non-finite skip),
`warn_only` (policy that only warns: no per-step host read), `store` (default + the run store
on disk), and for diagnosis `no_attention` and `no_update_ratio` (default without those signals). Cockpit's comparable figure (economy instruments every step): 1.51x."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from stablelab.models.transformer import Transformer, TransformerConfig
from stablelab.monitor import Monitor


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(variant: str, args, device: torch.device) -> dict:
    config = TransformerConfig(d_model=args.width, n_layers=args.depth, seq_len=args.seq_len)
    torch.manual_seed(0)
    bare_model = Transformer(config).to(device)
    monitored_model = Transformer(config).to(device)
    monitored_model.load_state_dict(bare_model.state_dict())
    if args.compile:  # both compiled; the Monitor is built before the first forward, as documented
        bare_model, monitored_model = torch.compile(bare_model), torch.compile(monitored_model)
    make = lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95), fused=True)  # noqa: E731
    bare_opt, monitored_opt = make(bare_model), make(monitored_model)
    tmp = tempfile.TemporaryDirectory()
    policy = {"*": "warn"} if variant == "warn_only" else None
    options = {"no_attention": {"attention": False}, "no_update_ratio": {"update_ratio_every": 0},
               "update_sample_1024": {"update_sample": 1024}}
    monitor = Monitor(monitored_model, monitored_opt, policy=policy, sync_every=args.sync_every,
                      log_dir=Path(tmp.name) / "run" if variant == "store" else None, sinks=(),
                      **options.get(variant, {}))
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (args.batch, args.seq_len + 1), generator=generator).to(device)
               for _ in range(16)]

    inside = {"observe": 0.0, "bare_step": 0.0, "monitored_step": 0.0}  # seconds, timed blocks only
    timing = [False]

    def step(model, optimizer, i, monitored):
        tokens = batches[i % len(batches)]
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        start = time.perf_counter()
        if monitored:
            monitor.observe(loss)
        middle = time.perf_counter()
        optimizer.step()  # the monitored one runs the update-ratio hooks and the guard's wrapper
        end = time.perf_counter()
        if timing[0]:
            inside["observe"] += middle - start
            inside["monitored_step" if monitored else "bare_step"] += end - middle
        optimizer.zero_grad(set_to_none=True)

    for i in range(args.warmup):  # compile kernels, allocate, fill Adam state
        step(bare_model, bare_opt, i, False)
        step(monitored_model, monitored_opt, i, True)
    bare_times, monitored_times, bare_cpu, monitored_cpu = [], [], [], []
    timing[0] = True
    i = args.warmup
    pairs = ((bare_model, bare_opt, False, bare_times, bare_cpu),
             (monitored_model, monitored_opt, True, monitored_times, monitored_cpu))
    for block in range(args.blocks):
        for model, optimizer, monitored, times, cpu in (pairs if block % 2 == 0 else pairs[::-1]):
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            for j in range(args.block):
                step(model, optimizer, i + j, monitored)
            _sync(device)
            times.append((time.perf_counter() - start) / args.block)
            cpu.append((time.process_time() - start_cpu) / args.block)
        i += args.block
    summary = monitor.close()
    tmp.cleanup()
    bare, monitored = statistics.median(bare_times), statistics.median(monitored_times)
    # Each block pair ran back to back: the median of their ratios resists load that drifts.
    pair_ratios = [m / b for b, m in zip(bare_times, monitored_times)]
    # Windows of one sync window of steps each (sync_every / block pairs): with --block 1 the two
    # copies alternate every step, so both see the same load, and each window holds one sampled step.
    per = max(1, args.sync_every // args.block)
    window_ratios = [sum(monitored_times[k:k + per]) / sum(bare_times[k:k + per])
                     for k in range(0, len(bare_times) - per + 1, per)]
    # CPU time of this process: what the monitor costs in work, nearly blind to other processes'
    # load on a shared machine (1 thread; on a GPU the wall-clock ratio is the one that counts).
    cpu_ratios = [m / b for b, m in zip(bare_cpu, monitored_cpu)]
    # The monitor's own time, attributed: inside observe() plus what its hooks add to
    # optimizer.step(), over the bare step's total time (immune to load that differs between
    # blocks; blind to what the monitor costs the rest of the step through the caches).
    # Meaningful where ops run synchronously (CPU); on a GPU the wall-clock ratio is the figure.
    steps = args.blocks * args.block  # each block runs both copies
    attributed_ms = 1e3 * (inside["observe"] + inside["monitored_step"] - inside["bare_step"]) / steps
    return {"variant": variant, "bare_ms": 1e3 * bare, "monitored_ms": 1e3 * monitored,
            "attributed_ms": attributed_ms, "attributed_ratio": 1 + attributed_ms / (1e3 * statistics.mean(bare_times)),
            "ratio": statistics.median(pair_ratios), "ratio_of_medians": monitored / bare,
            "window_ratio": statistics.median(window_ratios),
            "window_ratio_quartiles": statistics.quantiles(window_ratios, n=4),
            "pair_ratio_quartiles": statistics.quantiles(pair_ratios, n=4),
            "cpu_ratio": sum(monitored_cpu) / sum(bare_cpu),
            "cpu_pair_ratio_median": statistics.median(cpu_ratios),
            "cpu_pair_ratio_quartiles": statistics.quantiles(cpu_ratios, n=4),
            "bare_cpu_ms": 1e3 * statistics.median(bare_cpu),
            "monitored_cpu_ms": 1e3 * statistics.median(monitored_cpu),
            "events": summary["events"],
            "internal_errors": summary["internal_errors"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sync-every", type=int, default=10)
    parser.add_argument("--block", type=int, default=10, help="steps per timed block (a multiple of sync-every)")
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--variants", default="default,warn_only,store")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (default mode)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from rich.progress import track

    results = [measure(v, args, device) for v in track(args.variants.split(","), description="variants")]
    info = {"device": str(device), "torch": torch.__version__, "threads": args.threads,
            "model": f"reference d={args.width} layers={args.depth} seq={args.seq_len} batch={args.batch}" + (" compiled" if args.compile else ""),
            "sync_every": args.sync_every, "block": args.block, "blocks": args.blocks,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    for r in results:
        q1, _, q3 = r["pair_ratio_quartiles"]
        c1, _, c3 = r["cpu_pair_ratio_quartiles"]
        print(f"{r['variant']:>10}: wall: bare {r['bare_ms']:.2f} ms/step, monitored {r['monitored_ms']:.2f} "
              f"ms/step, ratio {r['ratio']:.3f}x (quartiles {q1:.3f}-{q3:.3f}; ratio of medians "
              f"{r['ratio_of_medians']:.3f}; per sync window {r['window_ratio']:.3f}, quartiles "
              f"{r['window_ratio_quartiles'][0]:.3f}-{r['window_ratio_quartiles'][2]:.3f})\n{'':>12}CPU time: bare {r['bare_cpu_ms']:.2f} ms/step, monitored "
              f"{r['monitored_cpu_ms']:.2f} ms/step, ratio {r['cpu_ratio']:.3f}x (pair median "
              f"{r['cpu_pair_ratio_median']:.3f}, quartiles {c1:.3f}-{c3:.3f}); events {r['events']}, "
              f"internal errors {r['internal_errors']}\n{'':>12}attributed: {r['attributed_ms']:.2f} ms/step "
              f"inside the monitor, ratio {r['attributed_ratio']:.3f}x")
    if args.out:
        from stablelab.store.files import atomic_write_json

        atomic_write_json(args.out, {"info": info, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
