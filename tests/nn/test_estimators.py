"""STE and ReSTE (Wu et al. 2023, official code DravenALG/ReSTE), each checked by hand against its
formula; the estimating-error and gradient-stability indicators computed by hand."""

import math

import pytest
import torch

from stablelab.errors import UsageError
from stablelab.nn import reste, reste_o_schedule, reste_slope, ste
from stablelab.signals import estimating_error, gradient_stability, power_estimator


def _grad(fn, x, *args):
    x = x.clone().requires_grad_(True)
    y = fn(x, *args)
    y.backward(torch.ones_like(y))
    return y.detach(), x.grad


X = torch.tensor([-2.0, -1.5, -1.0, -0.3, -0.1, -0.05, 0.0, 0.05, 0.1, 0.25, 1.0, 1.2, 1.5, 1.51, 3.0])


def test_ste_forward_is_sign_backward_is_clipped_identity():
    y, g = _grad(ste, X)
    assert torch.equal(y, torch.sign(X))
    # BinaryNet STE: 1 for |x| <= 1 (both ends), 0 beyond
    expected = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.float32)
    assert torch.equal(g, expected)


def test_ste_scales_the_incoming_gradient():
    x = torch.tensor([0.5, 2.0], requires_grad=True)
    ste(x).backward(torch.tensor([3.0, 5.0]))
    assert torch.equal(x.grad, torch.tensor([3.0, 0.0]))


def test_reste_at_o_1_is_the_ste_clipped_at_t():
    y, g = _grad(reste, X, 1.5, 1.0)
    assert torch.equal(y, torch.sign(X))
    assert torch.equal(g, (X.abs() <= 1.5).float())
    # with t = 1 it is exactly the plain STE
    assert torch.equal(_grad(reste, X, 1.0, 1.0)[1], _grad(ste, X)[1])


def test_reste_at_o_2_x_quarter_is_one():
    # d/dx x^(1/2) at 0.25 = 1 / (2 sqrt(0.25)) = 1
    _, g = _grad(reste, torch.tensor([0.25, -0.25]), 1.5, 2.0)
    assert torch.allclose(g, torch.tensor([1.0, 1.0]))


def test_reste_backward_by_hand_at_o_3():
    o, t = 3.0, 1.5
    _, g = _grad(reste, X, t, o)
    small = 0.1 ** (1 / o) / 0.1  # official approximate_function(0.1, o) / 0.1
    interval = torch.tensor(0.1).item()  # compared in float32, as the tensor is
    for x, got in zip(X.tolist(), g.tolist()):
        a = abs(x)
        if a <= interval:
            want = small
        elif a <= t:
            want = (1 / o) * a ** ((1 - o) / o)
        else:
            want = 0.0
        assert got == pytest.approx(want, rel=1e-6), x


def test_reste_small_interval_is_the_secant_and_continuous_at_its_edge_only_for_o_1():
    # the power slope just above 0.1 is (1/o) 0.1^((1-o)/o) = (1/o) * secant: smaller by 1/o
    o = 2.0
    inside, outside = reste_slope(torch.tensor([0.1, 0.1001]), 1.5, o).tolist()
    assert inside == pytest.approx(math.sqrt(0.1) / 0.1)
    assert outside == pytest.approx(inside / o, rel=1e-3)


def test_reste_slope_is_even_and_zero_beyond_t():
    x = torch.linspace(-3, 3, 61)
    s = reste_slope(x, 1.2, 2.5)
    assert torch.equal(s, reste_slope(-x, 1.2, 2.5))
    assert torch.all(s[x.abs() > 1.2] == 0)
    assert torch.all(s[x.abs() <= 1.2] > 0)


def test_reste_passes_no_nan_for_nan_and_inf_inputs():
    _, g = _grad(reste, torch.tensor([float("inf"), -float("inf"), float("nan")]), 1.5, 2.0)
    assert torch.equal(g, torch.zeros(3))  # the official masks are all false there: slope 0


def test_reste_works_in_float64_and_bfloat16():
    for dtype in (torch.float64, torch.bfloat16):
        _, g = _grad(reste, torch.tensor([0.25], dtype=dtype), 1.5, 2.0)
        assert g.dtype == dtype and float(g) == pytest.approx(1.0, rel=1e-2)


@pytest.mark.parametrize("t, o", [(1.5, 0.5), (1.5, 0.0), (1.5, float("nan")), (0.05, 2.0)])
def test_reste_bad_o_or_t_is_a_usage_error(t, o):
    with pytest.raises(UsageError):
        reste(torch.ones(2), t, o)


def test_o_schedule_is_the_official_cosine_rise():
    # official main.py: o = 1 + (1 - cos(pi/2 * epoch/epochs)) (o_end - 1)
    assert reste_o_schedule(0, 100) == 1.0
    assert reste_o_schedule(50, 100) == pytest.approx(1 + (1 - math.cos(math.pi / 4)) * 2)
    assert reste_o_schedule(99, 100) == pytest.approx(1 + (1 - math.cos(math.pi / 2 * 0.99)) * 2)
    values = [reste_o_schedule(e, 10, o_end=4.0) for e in range(10)]
    assert values == sorted(values) and values[-1] < 4.0
    with pytest.raises(UsageError):
        reste_o_schedule(0, 0)


def test_estimating_error_by_hand():
    w = torch.tensor([0.25, -1.0, 4.0, 0.0])
    # f_2 = sign(w) sqrt|w| = [0.5, -1, 2, 0]; minus sign(w) = [-0.5, 0, 1, 0]; norm sqrt(1.25)
    assert torch.equal(power_estimator(w, 2.0), torch.tensor([0.5, -1.0, 2.0, 0.0]))
    assert float(estimating_error(w, 2.0)) == pytest.approx(math.sqrt(1.25))
    # summed over tensors, like the official get_fitting_error over layers
    w2 = torch.tensor([[0.125, -8.0]])  # f_3 = [0.5, -2] -> [-0.5, -1] -> sqrt(1.25)
    assert float(estimating_error([w, w2], 3.0)) == pytest.approx(
        math.sqrt((0.25 ** (1 / 3) - 1) ** 2 + 0 + (4 ** (1 / 3) - 1) ** 2) + math.sqrt(1.25))
    # at o = 1 the estimator is the identity: error = || w - sign(w) ||
    assert float(estimating_error(w, 1.0)) == pytest.approx(math.sqrt(0.75 ** 2 + 0 + 9))
    with pytest.raises(UsageError):
        estimating_error(w, 0.5)


def test_estimating_error_falls_as_o_rises():
    w = torch.randn(1000) * 0.3
    errors = [float(estimating_error(w, o)) for o in (1.0, 2.0, 3.0, 5.0)]
    assert errors == sorted(errors, reverse=True)


def test_gradient_stability_by_hand():
    g = torch.tensor([1.0, -3.0, 2.0, -2.0])
    # |g| = [1, 3, 2, 2], mean 2, unbiased variance (1 + 1 + 0 + 0) / 3
    assert float(gradient_stability(g)) == pytest.approx(2 / 3)
    g2 = torch.tensor([[0.5, -0.5]])  # |g| equal: variance 0
    assert float(gradient_stability([g, g2, None])) == pytest.approx(2 / 3)


def test_the_trade_off_reste_gradients_are_less_stable_at_larger_o():
    # the paper's equilibrium: a larger o lowers the estimating error and raises Var(|grad|)
    torch.manual_seed(0)
    w = torch.randn(4096) * 0.5
    upstream = torch.randn(4096)
    stability = []
    for o in (1.0, 2.0, 3.0):
        x = w.clone().requires_grad_(True)
        reste(x, 1.5, o).backward(upstream)
        stability.append(float(gradient_stability(x.grad)))
    assert stability == sorted(stability)
