"""Small synthetic tasks for the dynamical-stability study (`stablelab sgd-stability`): sparse
regression with fewer samples than dimensions, a teacher-network regression, separable binary
classification, and a two-group "opposing signals" classification. Every generator draws from a
private torch.Generator seeded by `seed`, so the same seed gives the same data on every machine."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Regression:
    """Train and test inputs and targets; `truth` is the generating weight vector (if any)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    truth: torch.Tensor | None = None


def sparse_regression(n: int = 30, d: int = 100, k: int = 3, n_test: int = 500, seed: int = 0) -> Regression:
    """y = <w*, x> with x ~ N(0, I_d) and w* k-sparse with entries +-1 (the diagonal-linear-network
    setting of Woodworth et al. 2020 and Wu & Su 2023: n < d, so many interpolators exist and the
    l1-smallest one is w*)."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.zeros(d, dtype=torch.float64)
    support = torch.randperm(d, generator=g)[:k]
    truth[support] = torch.randint(0, 2, (k,), generator=g).double() * 2 - 1
    x = torch.randn(n + n_test, d, generator=g, dtype=torch.float64)
    y = x @ truth
    return Regression(x[:n], y[:n], x[n:], y[n:], truth)


def teacher_regression(n: int = 20, d: int = 5, teacher_width: int = 3, n_test: int = 500,
                       seed: int = 0) -> Regression:
    """y = sum_j a_j relu(<b_j, x>) from a narrow random teacher, x uniform on the unit sphere (a
    two-layer ReLU student of any larger width can interpolate the n training points)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_test, d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    b = torch.randn(teacher_width, d, generator=g, dtype=torch.float64)
    b = b / b.norm(dim=1, keepdim=True)
    a = torch.randn(teacher_width, generator=g, dtype=torch.float64)
    y = torch.relu(x @ b.T) @ a
    return Regression(x[:n], y[:n], x[n:], y[n:], None)


def separable_classification(n: int = 40, minority: float = 0.1, margin: float = 0.1, seed: int = 0
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Linearly separable 2-d points (x, y), y in {-1, +1}, separated by w* = e1 with margin `margin`,
    where the first GD step from 0 does not separate: with z = y x, z_1 ~ U[margin, 1]; a majority
    has z_2 ~ N(1, 0.3^2) and a fraction `minority` has z_2 ~ N(-4, 0.3^2), so the mean of z (the
    first step's direction) misclassifies the minority. The non-separable-by-the-mean construction
    is what makes the loss non-monotone at large step sizes (Wu, Bartlett, Telgarsky, Yu 2024)."""
    g = torch.Generator().manual_seed(seed)
    k = max(1, int(round(minority * n)))
    z1 = margin + (1 - margin) * torch.rand(n, generator=g, dtype=torch.float64)
    z2 = torch.randn(n, generator=g, dtype=torch.float64) * 0.3
    z2[:k] -= 4.0
    z2[k:] += 1.0
    y = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
    return torch.stack([z1, z2], dim=1) * y[:, None], y


def opposing_signals_classification(n: int = 400, d: int = 20, outlier_fraction: float = 0.05,
                                    outlier_scale: float = 8.0, seed: int = 0):
    """Binary classification with a pair of opposing outlier groups (Rosenfeld & Risteski 2023, their
    toy model: a rare, large-magnitude feature that points to one class in one group and to the other
    class in the other group). Returns (x, y in {0, 1}, group) with group 0 = ordinary points, 1 and 2
    = the two outlier groups, which share the feature x[:, -1] = +outlier_scale but carry opposite
    labels; ordinary points have x[:, -1] = 0 and a label set by a linear rule on the other features."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d - 1, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:, -1] = 0.0
    y = (x[:, :-1] @ w > 0).long()
    group = torch.zeros(n, dtype=torch.long)
    k = max(2, int(outlier_fraction * n)) // 2
    picks = torch.randperm(n, generator=g)[: 2 * k]
    group[picks[:k]], group[picks[k:]] = 1, 2
    x[picks, -1] = outlier_scale
    y[picks[:k]], y[picks[k:]] = 0, 1
    return x, y, group
