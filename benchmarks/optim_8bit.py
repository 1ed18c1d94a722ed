"""AdamW8bit: median step time as a ratio to torch.optim.AdamW(foreach=True), and state bytes per parameter.

A model-shaped set of parameters (blocks of weight d x d, bias d, gain d) gets fixed random
gradients; each optimizer steps on it with its defaults. Steps are timed round-robin (one step of
each optimizer per round), so a loaded machine slows all alike; medians over rounds are reported.
Our float32 and 8-bit StableSPAM and AdEMAMix, and bitsandbytes' and torchao's AdamW8bit, are timed too (where they run) (torchao's is torch.compile'd:
its first steps compile and are excluded by the warm-up). State bytes are counted from the state
tensors (codes, absmax, float32 moments; the step counter excluded).

    .venv/bin/python benchmarks/optim_8bit.py                      # CPU, 1 thread, about a minute
    .venv/bin/python benchmarks/optim_8bit.py --params 20e6 --rounds 10 --threads 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from stablelab.optim import AdEMAMix, AdEMAMix8bit, StableSPAM, StableSPAM8bit  # noqa: E402
from stablelab.optim.adamw8bit import AdamW8bit  # noqa: E402

TARGET_RATIO = 2.0  # issue 13, part 4: at most 2x torch.optim.AdamW(foreach=True) on CPU


def model_shaped(params: float, tensors: int, device: str) -> list[torch.nn.Parameter]:
    """tensors // 3 blocks of (weight d x d, bias d, gain d) with about `params` elements in all."""
    blocks = max(1, tensors // 3)
    # d a multiple of 16, so d x d is whole blocks of 256: torchao keeps float32 state for any other size
    d = max(16, int(math.sqrt(params / blocks)) // 16 * 16)
    generator = torch.Generator().manual_seed(0)
    shapes = [(d, d), (d,), (d,)] * blocks
    return [torch.nn.Parameter(torch.randn(s, generator=generator).to(device) * 0.02) for s in shapes]


def state_bytes_per_parameter(optimizer: torch.optim.Optimizer) -> float:
    numel = sum(p.numel() for p in optimizer.state)
    held = 0
    for entry in optimizer.state.values():
        for name, value in entry.items():
            if name == "step":
                continue
            if torch.is_tensor(value) and hasattr(value, "codes"):  # torchao's OptimState8bit subclass
                held += sum(t.numel() * t.element_size() for t in (value.codes, value.scale))
            elif torch.is_tensor(value) and not name.startswith("qmap"):  # bitsandbytes' shared maps
                held += value.numel() * value.element_size()
    return held / max(numel, 1)


def candidates(params: list[torch.nn.Parameter]):
    yield "torch.optim.AdamW(foreach=True)", lambda ps: torch.optim.AdamW(ps, foreach=True)
    yield "stablelab AdamW8bit", lambda ps: AdamW8bit(ps)
    yield "stablelab StableSPAM", lambda ps: StableSPAM(ps)
    yield "stablelab StableSPAM8bit", lambda ps: StableSPAM8bit(ps)
    yield "stablelab AdEMAMix", lambda ps: AdEMAMix(ps)
    yield "stablelab AdEMAMix8bit", lambda ps: AdEMAMix8bit(ps)
    try:
        import bitsandbytes
        yield f"bitsandbytes {bitsandbytes.__version__} AdamW8bit", lambda ps: bitsandbytes.optim.AdamW8bit(ps)
    except Exception as error:  # noqa: BLE001 - not installed or no native library
        print(f"bitsandbytes: skipped ({type(error).__name__})")
    try:
        import torchao
        from torchao.optim import AdamW8bit as TorchaoAdamW8bit
        yield f"torchao {torchao.__version__} AdamW8bit", lambda ps: TorchaoAdamW8bit(ps, block_size=256)
    except Exception as error:  # noqa: BLE001
        print(f"torchao: skipped ({type(error).__name__})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=5e6)
    parser.add_argument("--tensors", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-references", action="store_true", help="time only torch's AdamW and our AdamW8bit")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    runs = []
    for name, make in candidates([]):
        if args.skip_references and name not in ("torch.optim.AdamW(foreach=True)", "stablelab AdamW8bit"):
            continue
        params = model_shaped(args.params, args.tensors, args.device)
        generator = torch.Generator().manual_seed(1)
        for p in params:
            p.grad = (torch.randn(p.shape, generator=generator) * 0.02).to(args.device)
        optimizer = make(params)
        for _ in range(args.warmup):
            optimizer.step()
        runs.append((name, optimizer, []))
    n_params = sum(p.numel() for p in runs[0][1].param_groups[0]["params"])
    for _ in range(args.rounds):
        for _, optimizer, times in runs:
            start = time.perf_counter()
            optimizer.step()
            if args.device != "cpu":
                torch.cuda.synchronize() if args.device.startswith("cuda") else None
            times.append(time.perf_counter() - start)

    base = statistics.median(runs[0][2])
    print(f"{n_params / 1e6:.1f}M parameters in {len(runs[0][1].param_groups[0]['params'])} tensors, "
          f"device {args.device}, {args.threads} thread(s), median of {args.rounds} rounds")
    print(f"{'optimizer':<38} {'step ms':>9} {'x AdamW':>8} {'state B/param':>14}")
    for name, optimizer, times in runs:
        median = statistics.median(times)
        print(f"{name:<38} {median * 1e3:>9.2f} {median / base:>8.2f} {state_bytes_per_parameter(optimizer):>14.3f}")
    ours = statistics.median(runs[1][2]) / base
    print(f"target: stablelab AdamW8bit at most {TARGET_RATIO}x AdamW(foreach=True): "
          f"{'met' if ours <= TARGET_RATIO else 'NOT met'} ({ours:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
