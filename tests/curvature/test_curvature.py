"""Curvature instruments against exact Hessians (torch.func.hessian) and hand-built spectra."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from stablelab.signals.curvature import (
    adam_preconditioner,
    adam_threshold,
    gd_threshold,
    hessian_trace,
    hessian_vector_product,
    layer_top_eigenvalues,
    power_iteration,
    sharpness_check,
    top_eigenvalues,
)


def mse_loss(model, batch):
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).sum(1).mean()


def tiny_mlp(seed=0, dropout=0.0, dtype=torch.float64):
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 12), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(12, 3)]
    return nn.Sequential(*layers).to(dtype)


def tiny_batch(seed=1, n=50, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def exact_hessian(model, loss_fn, batch):
    """Full Hessian over all parameters (flattened in model.parameters() order) by torch.func."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(vector):
        params = {n: c.view(s) for n, c, s in zip(names, vector.split(sizes), shapes)}
        return loss_fn(lambda inp: functional_call(model, params, (inp,)), batch)

    return hessian(loss_of)(flat)


class Quadratic(nn.Module):
    """loss = 0.5 w^T A w with A = Q diag(spectrum) Q^T: the Hessian is A exactly."""

    def __init__(self, spectrum: torch.Tensor, seed: int = 0):
        super().__init__()
        n = spectrum.numel()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        self.register_buffer("a", q @ torch.diag(spectrum.double()) @ q.T)
        self.w = nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))

    def forward(self, _):
        return 0.5 * self.w @ self.a @ self.w


def quadratic_loss(model, batch):
    return model(batch)


def test_hvp_matches_exact_hessian():
    model, batch = tiny_mlp(), tiny_batch()
    h = exact_hessian(model, mse_loss, batch)
    g = torch.Generator().manual_seed(3)
    v = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in model.parameters()]
    hv = hessian_vector_product(model, mse_loss, batch, v)
    flat_hv = torch.cat([t.reshape(-1) for t in hv])
    expected = h @ torch.cat([t.reshape(-1) for t in v])
    torch.testing.assert_close(flat_hv, expected, rtol=1e-9, atol=1e-9)


def test_top_eigenvalues_on_quadratic_with_known_spectrum():
    # Clustered top of the spectrum (gap 1%) and a negative tail: the hard case for power iteration.
    spectrum = torch.cat([torch.tensor([10.0, 9.9, 9.5, 5.0]), torch.linspace(-3.0, 2.0, 196)])
    model = Quadratic(spectrum)
    values = top_eigenvalues(model, quadratic_loss, None, k=3, tol=1e-3)
    expected = torch.tensor([10.0, 9.9, 9.5], dtype=torch.float64)
    assert values.shape == (3,)
    assert torch.all(((values - expected).abs() / expected) < 1e-3)


@pytest.mark.parametrize("seed", range(4))
def test_residual_rule_guarantees_an_eigenvalue_within_tol(seed):
    # Bauer-Fike: the default rule stops only when some eigenvalue lies within tol * |theta|.
    spectrum = torch.cat([torch.tensor([10.0, 9.9, 9.5, 5.0]), torch.linspace(-3.0, 2.0, 196)])
    theta = float(top_eigenvalues(Quadratic(spectrum), quadratic_loss, None, k=1, seed=seed)[0])
    assert float((spectrum - theta).abs().min()) <= 1e-3 * abs(theta)


def test_top_eigenvalues_of_mlp_match_torch_func_hessian():
    model, batch = tiny_mlp(), tiny_batch()
    expected = torch.linalg.eigvalsh(exact_hessian(model, mse_loss, batch)).flip(0)[:2]
    result = top_eigenvalues(model, mse_loss, batch, k=2, tol=1e-3, return_result=True)
    assert result.converged
    rel = (result.eigenvalues - expected).abs() / expected.abs()
    assert torch.all(rel < 1e-3), (result.eigenvalues, expected)
    # The residual stopping rule should stop well before the Krylov space fills the whole space.
    assert result.products < sum(p.numel() for p in model.parameters())


def test_top_eigenvalue_float32_mlp_within_1e3():
    model, batch = tiny_mlp(dtype=torch.float32), tiny_batch(dtype=torch.float32)
    reference = exact_hessian(tiny_mlp(dtype=torch.float64), mse_loss, tiny_batch(dtype=torch.float64))
    expected = float(torch.linalg.eigvalsh(reference)[-1])
    value = float(top_eigenvalues(model, mse_loss, batch)[0])
    assert abs(value - expected) / expected < 1e-3


def test_hutch_plus_plus_trace_within_5_percent_on_quadratic():
    # Decaying spectrum, where Hutch++ beats Hutchinson (Meyer et al. 2021); 60 products, n = 300.
    spectrum = 1.0 / torch.arange(1, 301, dtype=torch.float64) ** 1.5
    model = Quadratic(spectrum, seed=2)
    trace = hessian_trace(model, quadratic_loss, None, n_products=60)
    assert abs(trace - float(spectrum.sum())) / float(spectrum.sum()) < 0.05


def test_hutch_plus_plus_trace_within_5_percent_on_mlp():
    # A 30-unit MLP (303 parameters), 90 Hessian-vector products.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 30), nn.Tanh(), nn.Linear(30, 3)).double()
    batch = tiny_batch(n=80)
    expected = float(torch.trace(exact_hessian(model, mse_loss, batch)))
    trace = hessian_trace(model, mse_loss, batch, n_products=90)
    assert abs(trace - expected) / abs(expected) < 0.05, (trace, expected)


def test_hutchinson_is_unbiased():
    # Mean of many independent single-probe estimates approaches the exact trace (CLT bound).
    model, batch = tiny_mlp(), tiny_batch()
    h = exact_hessian(model, mse_loss, batch)
    estimates = torch.tensor([hessian_trace(model, mse_loss, batch, n_products=1, method="hutchinson", seed=s)
                              for s in range(400)])
    # Var[z^T H z] = 2 (||H||_F^2 - sum_i H_ii^2) for Rademacher z (Hutchinson 1989).
    variance = 2 * (h.pow(2).sum() - h.diagonal().pow(2).sum())
    assert abs(float(estimates.mean() - h.trace())) < 4 * math.sqrt(float(variance) / 400)


def test_block_and_preconditioned_eigenvalues_match_exact():
    model, batch = tiny_mlp(), tiny_batch()
    h = exact_hessian(model, mse_loss, batch)
    first = list(model[0].parameters())
    n_first = sum(p.numel() for p in first)
    block = float(torch.linalg.eigvalsh(h[:n_first, :n_first])[-1])
    got = float(top_eigenvalues(model, mse_loss, batch, params=first)[0])
    assert abs(got - block) / abs(block) < 1e-3
    layers = layer_top_eigenvalues(model, mse_loss, batch)
    assert set(layers) == {"0", "2"} and abs(layers["0"] - block) / abs(block) < 1e-3

    g = torch.Generator().manual_seed(5)
    pre = [torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.1 for p in model.parameters()]
    p_flat = torch.cat([t.reshape(-1) for t in pre])
    # Eigenvalues of P^{-1} H (real: similar to the symmetric P^{-1/2} H P^{-1/2}).
    expected = float(torch.linalg.eigvals(torch.diag(1 / p_flat) @ h).real.max())
    got = float(top_eigenvalues(model, mse_loss, batch, preconditioner=pre)[0])
    assert abs(got - expected) / abs(expected) < 1e-3
    expected_trace = float((h.diagonal() / p_flat).sum())
    got_trace = hessian_trace(model, mse_loss, batch, preconditioner=pre, n_products=150)
    assert abs(got_trace - expected_trace) / abs(expected_trace) < 0.05


def test_power_iteration_baseline_converges_to_top_eigenvalue():
    spectrum = torch.cat([torch.tensor([4.0]), torch.linspace(0.0, 2.0, 99)])
    value, products, history = power_iteration(Quadratic(spectrum), quadratic_loss, None)
    assert abs(value - 4.0) / 4.0 < 1e-3 and products == len(history) <= 100


def _snapshot(model):
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("training", [True, False])
def test_leaves_mode_grad_and_rng_untouched(training):
    model = tiny_mlp(dropout=0.3)
    model.add_module("norm", nn.BatchNorm1d(3).double())  # buffers that a train-mode forward updates
    model.train(training)
    batch = tiny_batch()
    # Existing gradients on the first layer, none on the others.
    mse_loss(model, batch).backward()
    for p in list(model.parameters())[2:]:
        p.grad = None
    model.norm.running_mean.fill_(0.25)
    grads_before = _snapshot(model)
    modes_before = [m.training for m in model.modules()]
    buffers_before = [b.clone() for b in model.buffers()]

    rng_before = torch.get_rng_state()
    expected_next = torch.rand(5)  # what training would draw next
    torch.set_rng_state(rng_before)

    top_eigenvalues(model, mse_loss, batch, k=2)
    hessian_trace(model, mse_loss, batch, n_products=9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sharpness_check(model, mse_loss, batch, optimizer=opt, trace_products=6)

    assert torch.equal(torch.rand(5), expected_next)
    assert [m.training for m in model.modules()] == modes_before
    for before, p in zip(grads_before, model.parameters()):
        assert (before is None and p.grad is None) or torch.equal(before, p.grad)
    for before, b in zip(buffers_before, model.buffers()):
        assert torch.equal(before, b)


def test_sharpness_check_gd_and_adam_thresholds():
    model, batch = tiny_mlp(), tiny_batch()
    expected = float(torch.linalg.eigvalsh(exact_hessian(model, mse_loss, batch))[-1])
    lr = 1.9 / expected  # 2/lr = 1.05 lambda_max: inside the 10% edge margin
    out = sharpness_check(model, mse_loss, batch, lr=lr)
    assert abs(out["lambda_max"] - expected) / expected < 1e-3
    assert out["gd_threshold"] == pytest.approx(2 / lr)
    assert out["sharpness_ratio"] == pytest.approx(expected * lr / 2, rel=1e-3)
    assert out["edge_of_stability"] is True
    assert sharpness_check(model, mse_loss, batch, lr=lr / 2)["edge_of_stability"] is False
    assert "adam_threshold" not in out

    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    assert adam_threshold(1e-3, 0.9) == pytest.approx(38 / 1e-3)  # the paper's 38/lr
    assert gd_threshold(0.5) == 4.0
    for _ in range(3):
        opt.zero_grad()
        mse_loss(model, batch).backward()
        opt.step()
    out = sharpness_check(model, mse_loss, batch, optimizer=opt, trace_products=0)
    assert out["trace"] is None and out["lr"] == 1e-3
    # Independent P: Adam's state by hand, t = 3 (Cohen et al. 2022).
    p_flat = torch.cat([
        ((1 - 0.9 ** 3) * ((opt.state[p]["exp_avg_sq"] / (1 - 0.999 ** 3)).sqrt() + 1e-8)).reshape(-1)
        for p in model.parameters()
    ])
    h = exact_hessian(model, mse_loss, batch)
    expected_pre = float(torch.linalg.eigvals(torch.diag(1 / p_flat) @ h).real.max())
    assert abs(out["preconditioned_lambda_max"] - expected_pre) / expected_pre < 1e-3
    assert out["adam_threshold"] == pytest.approx(38 / 1e-3)
    assert out["adam_ratio"] == pytest.approx(expected_pre / 38e3, rel=1e-3)
    assert adam_preconditioner(torch.optim.Adam(model.parameters()), list(model.parameters())) is None


def test_warm_start_saves_products_and_stays_accurate():
    model, batch = tiny_mlp(), tiny_batch()
    cold = top_eigenvalues(model, mse_loss, batch, return_result=True)
    with torch.no_grad():  # a small training-like drift of the weights
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    expected = float(torch.linalg.eigvalsh(exact_hessian(model, mse_loss, batch))[-1])
    fresh = top_eigenvalues(model, mse_loss, batch, return_result=True)
    warm = top_eigenvalues(model, mse_loss, batch, return_result=True, start=cold.vector)
    assert abs(float(warm.eigenvalues[0]) - expected) / expected < 1e-3
    assert warm.products < fresh.products
    state: dict = {}
    first = sharpness_check(model, mse_loss, batch, lr=0.1, trace_products=0, warm_start=state)
    second = sharpness_check(model, mse_loss, batch, lr=0.1, trace_products=0, warm_start=state)
    assert "vector" in state and second["products"] < first["products"]
    assert second["lambda_max"] == pytest.approx(expected, rel=1e-3)
