"""The study's runs against hand-worked expectations: the first logistic GD step, Adam's
preconditioned sharpness on a quadratic, and an SGD run's curvature at interpolation."""

import math

import torch
from torch import nn

from stablelab.data.synthetic import separable_classification, sparse_regression
from stablelab.models.dynamics import DiagonalLinearNet, gauss_newton_trace
from stablelab.run.dynamics import stability_run
from stablelab.run.dynamics_adam import preconditioned_sharpness
from stablelab.run.dynamics_signals import logistic_run


def test_logistic_gd_starts_at_log2_and_its_first_step_is_the_mean_margin_direction():
    lr = 100.0
    out = logistic_run(lr, steps=2, record_every=1)
    assert abs(out["losses"][0] - math.log(2)) < 1e-12
    x, y = separable_classification()
    # grad of mean log(1 + exp(-y w.x)) at w = 0 is -mean(y x) / 2
    w1 = lr * (y[:, None] * x).mean(0) / 2
    expected = float(torch.nn.functional.softplus(-(y * (x @ w1))).mean())
    assert abs(out["losses"][1] - expected) < 1e-9 * max(1.0, expected)
    assert out["loss_increases"] == int(expected > math.log(2))


def test_separable_data_is_separated_by_e1_but_not_by_the_first_step():
    x, y = separable_classification(n=40, minority=0.1, margin=0.1)
    assert bool(((y * x[:, 0]) >= 0.1).all())
    mean_direction = (y[:, None] * x).mean(0)
    assert bool(((y * (x @ mean_direction)) < 0).any())


class Quadratic(nn.Module):
    def __init__(self, w0):
        super().__init__()
        self.w = nn.Parameter(w0.clone())


def test_preconditioned_sharpness_on_a_quadratic_matches_the_hand_value():
    # L = 0.5 sum h_i w_i^2; after one Adam step from w0 (gradient g = h w0): v_hat = g^2, so
    # P = (1 - beta1)(|g| + eps) and P^-1 H has eigenvalues h_i / P_i (Cohen et al. 2022).
    h = torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64)
    w0 = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    model = Quadratic(w0)
    loss_fn = lambda m, batch: 0.5 * (h * m.w ** 2).sum()  # noqa: E731
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    assert preconditioned_sharpness(model, loss_fn, None, optimizer, {}) is None  # no Adam state yet
    loss_fn(model, None).backward()
    optimizer.step()
    g = h * w0
    expected = float((h / ((1 - 0.9) * (g.abs() + 1e-8))).max())
    value = preconditioned_sharpness(model, loss_fn, None, optimizer, {}, tol=1e-10)
    assert abs(value - expected) < 1e-6 * expected


def test_sgd_run_reaches_interpolation_and_its_trace_matches_the_gauss_newton_trace(tmp_path):
    data = sparse_regression(n=8, d=12, k=2, n_test=50, seed=0)
    make = lambda: DiagonalLinearNet(12, 0.3)  # noqa: E731
    row = stability_run("diagonal_linear", make, data, 0.02, 1, max_steps=20000, target_loss=1e-9,
                        trace_products=72, seed=0, run_dir=tmp_path / "run")
    assert row["interpolated"] and row["optimizer"] == "sgd" and row["train_loss"] < 1e-9
    # the same run without a store gives the same numbers, and the stored one reads back unchanged
    again = stability_run("diagonal_linear", make, data, 0.02, 1, max_steps=20000, target_loss=1e-9,
                          trace_products=72, seed=0, run_dir=None)
    assert again["trace"] == row["trace"]
    assert stability_run("diagonal_linear", make, data, 0.02, 1, max_steps=20000, target_loss=1e-9,
                         trace_products=72, seed=0, run_dir=tmp_path / "run")["trace"] == row["trace"]
    assert abs(row["lr_trace_over_2"] - 0.02 * row["trace"] / 2) < 1e-15
    assert abs(row["lr_lambda_over_2"] - 0.02 * row["lambda_max"] / 2) < 1e-15


def test_measured_trace_is_the_gauss_newton_trace_at_the_reached_minimum():
    from stablelab.run.dynamics import measure_minimum, train_to_interpolation

    data = sparse_regression(n=8, d=12, k=2, n_test=50, seed=0)
    model = DiagonalLinearNet(12, 0.3)
    trained = train_to_interpolation(model, data, 0.02, 1, target_loss=1e-10)
    assert trained["train_loss"] < 1e-10
    measured = measure_minimum(model, data, 0.02, trace_products=72)   # 72 >= 3 x 24 parameters: exact
    assert abs(measured["trace"] - gauss_newton_trace(model, data.x_train)) < 1e-4 * measured["trace"]
    assert abs(measured["norm"] - float((model.u ** 2 - model.v ** 2).detach().abs().sum())) < 1e-12
