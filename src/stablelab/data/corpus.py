"""Byte corpora for the reference model.

The built-in corpus is the Python standard library's own `.py` source, read as bytes (no download).
`--corpus PATH` takes any text file or folder. The split is deterministic: the byte stream is cut
into 64 KiB blocks and every 10th block goes to validation."""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from stablelab.errors import UsageError

BLOCK = 64 * 1024
VALIDATION_EVERY = 10
BUILTIN = "stdlib"
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib"}


@dataclass(frozen=True)
class Corpus:
    train: np.ndarray          # uint8
    validation: np.ndarray     # uint8
    source: str                # "stdlib" or the resolved path
    file_list_sha256: str      # hash of the sorted relative file list (with sizes)
    n_files: int
    python_version: str

    def describe(self) -> dict:
        return {
            "source": self.source, "n_files": self.n_files, "file_list_sha256": self.file_list_sha256,
            "python_version": self.python_version, "train_bytes": int(self.train.size),
            "validation_bytes": int(self.validation.size),
        }


def stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return root, files


def folder_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return files


def split_blocks(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every VALIDATION_EVERY-th block of BLOCK bytes is validation; the rest is training."""
    n_blocks = -(-data.size // BLOCK)
    is_val = np.zeros(data.size, dtype=bool)
    for b in range(VALIDATION_EVERY - 1, n_blocks, VALIDATION_EVERY):
        is_val[b * BLOCK:(b + 1) * BLOCK] = True
    if not is_val.any():  # tiny corpus: the last tenth is validation
        is_val[data.size - max(1, data.size // VALIDATION_EVERY):] = True
    return data[~is_val], data[is_val]


@lru_cache(maxsize=4)
def load_corpus(path: str = BUILTIN, max_bytes: int = 32 * 1024 * 1024) -> Corpus:
    """Load and split a corpus (cached per process, so a worker reads it once)."""
    if path == BUILTIN:
        root, files = stdlib_files()
        source = BUILTIN
    else:
        p = Path(path).expanduser()
        if not p.exists():
            raise UsageError(f"corpus not found: {path}")
        root, files = (p.parent, [p]) if p.is_file() else (p, folder_files(p))
        source = str(p.resolve())
    listing = hashlib.sha256()
    chunks, total = [], 0
    for f in files:
        data = f.read_bytes()
        listing.update(f"{f.relative_to(root).as_posix()}\t{len(data)}\n".encode())
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    data = np.frombuffer(b"".join(chunks)[:max_bytes], dtype=np.uint8)
    if data.size < 4 * BLOCK // 16:
        raise UsageError(f"corpus {path} has only {data.size} bytes; need at least {4 * BLOCK // 16}")
    train, validation = split_blocks(data)
    return Corpus(
        train=train, validation=validation, source=source, file_list_sha256=listing.hexdigest(),
        n_files=len(chunks), python_version=sys.version.split()[0],
    )


def sample_batch(data: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of seq_len + 1 bytes: (inputs, next-byte targets), int64."""
    starts = torch.randint(0, data.size - seq_len - 1, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
    window = torch.from_numpy(data[idx.numpy()].astype(np.int64))
    return window[:, :-1], window[:, 1:]
