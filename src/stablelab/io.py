"""Crash-safe file writes and plain JSON (standard library only; the bottom layer, L0).

A write goes to a temporary name in the same folder, is fsynced, then renamed over the target, so a
reader sees the old file or the new one, never half of either. The store and the report both write
through here."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


_NONFINITE_TAG = "$float"  # {"$float": "nan" | "inf" | "-inf"}: a non-finite number in strict JSON


FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space left; disk quota exceeded


def out_of_space(error: BaseException) -> bool:
    """Whether `error` is a write that failed for want of disk space (or quota)."""
    return isinstance(error, OSError) and error.errno in FULL_DISK_ERRNOS


@contextmanager
def naming_failed_writes(path: str | Path):
    """An OSError raised in the block names `path` when it names no file itself (a write() to an
    open handle on a full disk says only "No space left on device")."""
    try:
        yield
    except OSError as error:
        if error.filename is not None:
            raise
        # a new error, not the old one with a filename set: that would not survive pickling (a
        # Dask worker's error reaches the driver pickled)
        raise OSError(error.errno, error.strerror, str(path)) from error


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    with naming_failed_writes(path):
        _atomic_write_bytes(path, data)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_jsonable(value: Any, keep_nonfinite: bool = False) -> Any:
    """Plain JSON: NaN and infinities become null (strict JSON has no NaN), or with keep_nonfinite
    a tag {"$float": "nan" | "inf" | "-inf"} that `read_json_exact` turns back into the float."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if not keep_nonfinite:
            return None
        return {_NONFINITE_TAG: "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, keep_nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, keep_nonfinite) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return to_jsonable(value.item(), keep_nonfinite)
    return value


def atomic_write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _untag(value: dict) -> Any:
    if len(value) == 1 and _NONFINITE_TAG in value:
        return float(value[_NONFINITE_TAG])
    return value


def atomic_write_json_exact(path: str | Path, obj: Any) -> None:
    """Like atomic_write_json, but NaN and infinities survive: stored as {"$float": "nan"} (strict
    JSON), read back as floats by `read_json_exact`. For data whose non-finite values carry meaning
    (a run's losses and gradient norms)."""
    text = json.dumps(to_jsonable(obj, keep_nonfinite=True), separators=(",", ":"), allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def read_json_exact(path: str | Path) -> Any:
    """A file written by `atomic_write_json_exact`, with its NaN and infinities restored."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle, object_hook=_untag)
