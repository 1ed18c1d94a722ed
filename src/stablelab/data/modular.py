"""Algorithmic tasks for grokking: modular arithmetic and sparse parity (Power et al. 2022;
Barak et al. 2022; set-up of Prieto et al. 2025, arXiv 2501.04697).

Modular arithmetic: every pair (a, b) in [0, p)^2, input = one-hot(a) ++ one-hot(b) (2p dims),
label = (a op b) mod p; a random `train_fraction` of the p^2 pairs is the training set, the rest
the test set. Sparse parity: random bits, label = XOR of the first k bits, other bits are noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from stablelab.errors import UsageError

OPERATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,  # torch's % follows the divisor's sign: result in [0, p)
    "mul": lambda a, b, p: (a * b) % p,
}
SYMBOLS = {"add": "+", "sub": "-", "mul": "*"}


@dataclass(frozen=True)
class ClassificationTask:
    """A full-batch classification task: tensors ready to train on."""

    name: str
    x_train: torch.Tensor  # (n_train, input_dim)
    y_train: torch.Tensor  # (n_train,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_dim(self) -> int:
        return int(self.x_train.shape[1])


def _split(n: int, train_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0.0 < train_fraction < 1.0:
        raise UsageError(f"train fraction must lie strictly between 0 and 1, got {train_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = int(round(train_fraction * n))
    if n_train == 0 or n_train == n:
        raise UsageError(f"train fraction {train_fraction} leaves an empty train or test set ({n} samples)")
    return order[:n_train], order[n_train:]


def modular_arithmetic(operation: str = "add", p: int = 113, train_fraction: float = 0.4, seed: int = 0,
                       dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> ClassificationTask:
    """All p^2 pairs of (a op b) mod p, one-hot inputs concatenated (2p dims), random split."""
    if operation not in OPERATIONS:
        raise UsageError(f"unknown operation {operation!r}; choose from {', '.join(OPERATIONS)}")
    if p < 2:
        raise UsageError(f"modulus p must be at least 2, got {p}")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    y = OPERATIONS[operation](a, b, p)
    eye = torch.eye(p, dtype=dtype)
    x = torch.cat([eye[a], eye[b]], dim=1)
    train, test = _split(p * p, train_fraction, seed)
    to = lambda t: t.to(device)  # noqa: E731
    return ClassificationTask(f"a {SYMBOLS[operation]} b mod {p}", to(x[train]), to(y[train]),
                              to(x[test]), to(y[test]), p)


def sparse_parity(n_parity: int = 4, n_noise: int = 36, n_samples: int = 2000, train_fraction: float = 0.5,
                  seed: int = 0, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> ClassificationTask:
    """Random {0, 1} vectors of n_parity + n_noise bits; label = XOR of the first n_parity bits."""
    if n_parity < 1 or n_noise < 0 or n_samples < 2:
        raise UsageError("sparse parity needs n_parity >= 1, n_noise >= 0 and n_samples >= 2")
    generator = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (n_samples, n_parity + n_noise), generator=generator)
    y = bits[:, :n_parity].sum(dim=1) % 2
    train, test = _split(n_samples, train_fraction, seed + 1)
    x = bits.to(dtype)
    to = lambda t: t.to(device)  # noqa: E731
    return ClassificationTask(f"parity of {n_parity} of {n_parity + n_noise} bits", to(x[train]),
                              to(y[train]), to(x[test]), to(y[test]), 2)
