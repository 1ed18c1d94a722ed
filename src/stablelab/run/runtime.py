"""The runtime options' checks that need torch: the device exists here, and the thread count is
set for a block and restored after it (`stablelab.config.Runtime` holds the values)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from stablelab.config import Runtime
from stablelab.errors import UsageError


def checked(runtime: Runtime) -> Runtime:
    """`runtime` after every check (counts, the device, then --out: a folder it can write in, created
    here); UsageError, one line, otherwise."""
    runtime.checked()
    check_device(runtime.device)
    if runtime.out is not None:
        from stablelab.config import ensure_out_folder

        ensure_out_folder(runtime.out, create=False)  # checked here, created when work starts
    return runtime


def check_device(name: str) -> None:
    """UsageError unless torch can use device `name` on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise UsageError(f"--device: {name!r} is not a torch device ({error})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {name}: MPS is not available here")
    elif device.type not in ("cpu", "meta"):
        try:
            torch.empty(1, device=device)
        except Exception as error:  # noqa: BLE001 - any backend's refusal
            raise UsageError(f"--device {name}: not usable here ({type(error).__name__})") from None


@contextlib.contextmanager
def threads_scope(threads: int | None) -> Iterator[None]:
    """torch.set_num_threads(threads) for the block, the previous count restored after it (None:
    leave torch's choice)."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
