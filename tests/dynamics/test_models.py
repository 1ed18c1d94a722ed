"""The models of the dynamical-stability study against hand-worked Hessians, traces and norms."""

import torch
from torch.autograd.functional import hessian

from stablelab.data.synthetic import sparse_regression, teacher_regression
from stablelab.models.dynamics import DiagonalLinearNet, TwoLayerReLU, gauss_newton_trace, half_mse
from stablelab.signals.curvature import hessian_trace, top_eigenvalues


def _flat_loss(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def f(flat):
        params = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes)}
        out = torch.func.functional_call(model, params, (x,))
        return 0.5 * (out - y).pow(2).mean()
    return f, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_diagonal_net_hessian_at_an_interpolating_point_matches_the_hand_formula():
    # At f(x_i) = y_i the Hessian of 1/(2n) sum (x_i.(u^2 - v^2) - y_i)^2 is (1/n) sum_i g_i g_i^T with
    # g_i = (2 u * x_i, -2 v * x_i), so trace = (4/n) sum_i sum_j (u_j^2 + v_j^2) x_ij^2.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    model = DiagonalLinearNet(4, 0.5)
    with torch.no_grad():
        model.u.copy_(torch.tensor([1.0, 0.3, -0.7, 0.2], dtype=torch.float64))
        model.v.copy_(torch.tensor([0.1, 0.9, 0.4, -0.5], dtype=torch.float64))
    y = model(x).detach()
    u, v = model.u.detach(), model.v.detach()
    grads = torch.cat([2 * u * x, -2 * v * x], dim=1)           # (n, 2d) rows g_i
    expected = grads.T @ grads / len(x)
    f, flat = _flat_loss(model, x, y)
    assert torch.allclose(hessian(f, flat), expected, atol=1e-12)
    hand_trace = float(4 / len(x) * ((u ** 2 + v ** 2) * x ** 2).sum())
    assert abs(float(torch.trace(expected)) - hand_trace) < 1e-10
    assert abs(gauss_newton_trace(model, x) - hand_trace) < 1e-10
    # the study's instruments on the same point: Hutch++ with as many products as parameters x 3 is
    # exact (the sketch spans the Hessian's range), Lanczos gives the top eigenvalue of `expected`
    assert abs(hessian_trace(model, half_mse, (x, y), n_products=24) - hand_trace) < 1e-8 * hand_trace
    lam = float(top_eigenvalues(model, half_mse, (x, y), tol=1e-8)[0])
    assert abs(lam - float(torch.linalg.eigvalsh(expected)[-1])) < 1e-6 * lam


def test_diagonal_net_norm_is_l1_of_the_effective_predictor():
    model = DiagonalLinearNet(3, 0.5)
    with torch.no_grad():
        model.u.copy_(torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64))
        model.v.copy_(torch.tensor([0.0, 3.0, 1.0], dtype=torch.float64))
    assert torch.equal(model.effective_weights(), torch.tensor([1.0, -9.0, 3.0], dtype=torch.float64))
    assert model.norm() == 13.0
    assert float(DiagonalLinearNet(5, 0.3)(torch.ones(2, 5, dtype=torch.float64)).detach().abs().max()) == 0.0


def test_two_layer_relu_forward_and_path_norm_by_hand():
    model = TwoLayerReLU(2, width=2)
    with torch.no_grad():
        model.b.copy_(torch.tensor([[3.0, 4.0], [1.0, -1.0]], dtype=torch.float64))
        model.a.copy_(torch.tensor([2.0, -1.0], dtype=torch.float64))
    x = torch.tensor([[1.0, 1.0], [1.0, -2.0]], dtype=torch.float64)
    # relu([7, 0]) . a = 14; relu([-5, 3]) . a = -3
    assert torch.allclose(model(x), torch.tensor([14.0, -3.0], dtype=torch.float64))
    assert abs(model.norm() - (2 * 5 + 1 * 2 ** 0.5)) < 1e-12


def test_two_layer_relu_trace_at_interpolation_is_the_gauss_newton_trace():
    data = teacher_regression(n=8, d=3, seed=0)
    model = TwoLayerReLU(3, width=6, seed=2)
    y = model(data.x_train).detach()                             # interpolating targets
    f, flat = _flat_loss(model, data.x_train, y)
    exact = float(torch.trace(hessian(f, flat)))
    assert abs(gauss_newton_trace(model, data.x_train) - exact) < 1e-10 * exact


def test_sparse_regression_has_fewer_samples_than_dimensions_and_a_k_sparse_truth():
    data = sparse_regression(n=10, d=40, k=3, n_test=20, seed=0)
    assert data.x_train.shape == (10, 40) and data.x_test.shape == (20, 40)
    assert int((data.truth != 0).sum()) == 3 and set(data.truth[data.truth != 0].abs().tolist()) == {1.0}
    assert torch.allclose(data.y_train, data.x_train @ data.truth)
