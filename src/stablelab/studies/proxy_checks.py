"""The proxy study's checks before any run starts: an --out it can create and resume, a sweep.json it
can read, a sequence length the corpus can fill and that fits in memory. Each failure is one
UsageError line (exit 2), never a traceback from inside the sweep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from stablelab import config
from stablelab.errors import UsageError
from stablelab.io import atomic_write_json, read_json

SWEEP_FILE = "sweep.json"
MEMORY_HEADROOM = 0.8  # plan on at most this share of the memory that is free now


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; use a new --out")


def prepare_out(out: Path, fingerprint: dict) -> None:
    """Create OUT, or check that an existing OUT holds this same grid (then we resume)."""
    sweep_file = out / SWEEP_FILE
    check_out(out)
    if sweep_file.exists():
        try:
            previous = read_json(sweep_file)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UsageError(f"{sweep_file} cannot be read ({type(error).__name__}: {error}); it is not a "
                             "sweep this version wrote: move it away, or use a new --out to start fresh") from None
        if not isinstance(previous, dict):
            raise UsageError(f"{sweep_file} does not hold a proxy-study grid; use a new --out to start fresh")
        if previous != fingerprint:
            changed = config.differences(previous, fingerprint)
            raise UsageError(f"{out} holds a different grid (differs in: {', '.join(changed)}); "
                             "use a new --out or the same settings to resume")
        return
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty and holds no stablelab proxy study; use a new --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(sweep_file, fingerprint)
    except OSError as error:
        raise UsageError(f"cannot create or write --out {out}: {error.strerror or error}") from None


def run_memory_bytes(run: Any) -> int:
    """A generous estimate of one run's peak memory: the attention scores of every layer (batch x
    heads x seq_len^2, kept for the backward and read once more by the monitor's attention signal),
    the activations (about 16 x batch x seq_len x width per layer) and the logits (batch x seq_len x
    256 bytes of vocabulary, with their softmax and gradient), in float32."""
    heads = max(1, run.width // max(1, run.d_head))
    tokens = run.batch_size * run.seq_len
    scores = 3 * run.batch_size * heads * run.seq_len ** 2 * run.depth
    activations = 16 * tokens * run.width * run.depth
    logits = 3 * tokens * 256
    return 4 * (scores + activations + logits)


def available_memory_bytes(device: str) -> int | None:
    """Free memory on the device the runs will use (None when it cannot be read)."""
    try:
        if device.startswith("cuda"):
            import torch

            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - an estimate we cannot make is no reason to refuse
        return None


def check_runs_fit(runs: Sequence[Any], corpus: Any, device: str, workers: int = 1) -> None:
    """Refuse, before training, a sequence length the corpus cannot fill and runs that cannot fit in
    the memory that is free (`workers` runs at once)."""
    longest = max(runs, key=lambda r: r.seq_len)
    need = longest.seq_len + 2  # a window of seq_len + 1 bytes needs at least one start position
    for split, data in (("training", corpus.train), ("validation", corpus.validation)):
        if data.size < need:
            raise UsageError(f"--seq-len {longest.seq_len} needs at least {need} bytes of {split} text; the corpus "
                             f"has {corpus.train.size} training and {corpus.validation.size} validation bytes: "
                             "use a shorter --seq-len or a larger --corpus")
    largest = max(runs, key=run_memory_bytes)
    need_bytes = run_memory_bytes(largest) * max(1, workers)
    free = available_memory_bytes(largest.device)
    if free is not None and need_bytes > MEMORY_HEADROOM * free:
        raise UsageError(f"the largest run (width {largest.width}, depth {largest.depth}, --seq-len {largest.seq_len}, "
                         f"--batch-size {largest.batch_size}) needs about {need_bytes / 2**30:.1f} GiB for "
                         f"{max(1, workers)} worker(s), more than the {free / 2**30:.1f} GiB free: lower --seq-len, "
                         "--batch-size or --workers")
