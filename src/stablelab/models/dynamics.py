"""Models where the dynamical-stability theory of SGD applies (Wu & Su 2023, "The implicit
regularization of dynamical stability in SGD", sections 4-5): a diagonal linear network and a
two-layer ReLU network without biases, each with the parameter norm the paper ties to trace(H)."""

from __future__ import annotations

import torch
from torch import nn


class DiagonalLinearNet(nn.Module):
    """f(x) = <u*u - v*v, x> (Woodworth et al. 2020); u = v = init_scale at the start, so f = 0 and
    the effective predictor w = u*u - v*v starts at zero."""

    def __init__(self, dim: int, init_scale: float = 0.5, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.u = nn.Parameter(torch.full((dim,), float(init_scale), dtype=dtype))
        self.v = nn.Parameter(torch.full((dim,), float(init_scale), dtype=dtype))

    def effective_weights(self) -> torch.Tensor:
        return (self.u * self.u - self.v * self.v).detach()

    def norm(self) -> float:
        """||w||_1 of the effective linear predictor (Wu & Su 2023, section 5: at an interpolating
        minimum trace(H) is within constant factors of ||w||_1 times the data's second moment)."""
        return float(self.effective_weights().abs().sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.u * self.u - self.v * self.v)


class TwoLayerReLU(nn.Module):
    """f(x) = sum_k a_k relu(<b_k, x>) (Wu & Su 2023, section 4: no biases, no 1/width factor);
    b_k ~ N(0, I / d), a_k ~ N(0, init_scale^2 / width)."""

    def __init__(self, dim: int, width: int = 64, init_scale: float = 1.0, seed: int = 0,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.b = nn.Parameter(torch.randn(width, dim, generator=g, dtype=dtype) / dim ** 0.5)
        self.a = nn.Parameter(torch.randn(width, generator=g, dtype=dtype) * init_scale / width ** 0.5)

    def norm(self) -> float:
        """Path norm sum_k |a_k| ||b_k|| (Wu & Su 2023, section 4: the trace at an interpolating
        minimum controls this norm on inputs spread over the sphere)."""
        return float((self.a.detach().abs() * self.b.detach().norm(dim=1)).sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.b.T) @ self.a


def half_mse(model: nn.Module, batch) -> torch.Tensor:
    """L = 1/(2n) sum_i (f(x_i) - y_i)^2 (Wu & Su 2023, eq. 1); at an interpolating minimum its
    Hessian is the Gauss-Newton matrix (1/n) sum_i grad f(x_i) grad f(x_i)^T."""
    x, y = batch
    return 0.5 * (model(x).reshape(y.shape) - y).pow(2).mean()


def gauss_newton_trace(model: nn.Module, x: torch.Tensor) -> float:
    """trace of (1/n) sum_i grad f(x_i) grad f(x_i)^T = mean_i ||grad_theta f(x_i)||^2: the Hessian's
    trace at an interpolating minimum of `half_mse` (the residual term vanishes there)."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = 0.0
    for row in x:
        grads = torch.autograd.grad(model(row[None]).sum(), params)
        total += float(sum(g.pow(2).sum() for g in grads))
    return total / len(x)
