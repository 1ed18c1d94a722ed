"""StableMax (Prieto et al. 2025): forward and gradient against values worked by hand."""

import math

import numpy as np
import pytest
import torch

from stablelab.nn import StableMax, stable_max_cross_entropy


def test_stablemax_probabilities_by_hand():
    # s(0) = 1, s(1) = 2, s(-1) = 1/2 -> sum 3.5 -> probabilities 2/7, 4/7, 1/7
    x = torch.tensor([[0.0, 1.0, -1.0]])
    probs = StableMax(dim=-1)(x)
    assert torch.allclose(probs, torch.tensor([[2 / 7, 4 / 7, 1 / 7]]), atol=1e-7)


def test_stablemax_cross_entropy_value_and_gradient_by_hand():
    x = torch.tensor([[0.0, 1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    loss = stable_max_cross_entropy(x, torch.tensor([1]))
    assert loss.item() == pytest.approx(-math.log(4 / 7), abs=1e-12)
    loss.backward()
    # d/dx_i [log S - log s(x_y)] = s'(x_i)/S - [i == y] s'(x_y)/s(x_y);  s' = 1 (x >= 0), 1/(1-x)^2 (x < 0)
    expected = [1 / 3.5, 1 / 3.5 - 1 / 2, 0.25 / 3.5]
    assert x.grad[0].tolist() == pytest.approx(expected, abs=1e-12)


def _reference_loss(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The paper's formula in numpy float64, one sample at a time."""
    out = []
    for row, y in zip(logits.astype(np.float64), target):
        s = np.array([v + 1 if v >= 0 else 1 / (1 - v) for v in row])
        out.append(-np.log(s[y] / s.sum()))
    return np.array(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stablemax_cross_entropy_matches_numpy_reference(dtype):
    logits = torch.randn(16, 7, dtype=dtype) * 5
    target = torch.randint(0, 7, (16,))
    ours = stable_max_cross_entropy(logits, target, reduction="none")
    ref = _reference_loss(logits.double().numpy(), target.numpy())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert ours.dtype == dtype
    np.testing.assert_allclose(ours.double().numpy(), ref, rtol=tol, atol=tol)
    assert stable_max_cross_entropy(logits, target).item() == pytest.approx(ref.mean(), rel=tol)
    assert stable_max_cross_entropy(logits, target, reduction="sum").item() == pytest.approx(ref.sum(), rel=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stablemax_is_finite_where_softmax_collapses(dtype):
    # a logit gap of 1e4: softmax cross-entropy of the correct class is exactly 0 (collapse);
    # StableMax keeps a positive loss and a non-zero, finite gradient in both precisions.
    x = torch.tensor([[1e4, 0.0, -1e4]], dtype=dtype, requires_grad=True)
    assert torch.nn.functional.cross_entropy(x.detach(), torch.tensor([0])).item() == 0.0
    loss = stable_max_cross_entropy(x, torch.tensor([0]))
    loss.backward()
    # S = 10001 + 1 + 1/10001; loss = log(S / 10001)
    expected = math.log((10001 + 1 + 1 / 10001) / 10001)
    assert loss.item() == pytest.approx(expected, rel=1e-4 if dtype == torch.float32 else 1e-10)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_stablemax_gradient_has_no_nan_at_branch_points():
    # x = 1 makes 1/(1-x) infinite and x = 0 is the branch point: torch.where must not leak NaN
    x = torch.tensor([[1.0, 0.0, -3.0]], requires_grad=True)
    stable_max_cross_entropy(x, torch.tensor([2])).backward()
    assert torch.isfinite(x.grad).all()


def test_same_call_shape_as_cross_entropy():
    # classes on dim 1 for (N, C, d) inputs, ignore_index like torch.nn.functional.cross_entropy
    logits = torch.randn(3, 5, 4)
    target = torch.randint(0, 5, (3, 4))
    target[0, 0] = -100
    per_position = stable_max_cross_entropy(logits, target, reduction="none")
    assert per_position.shape == (3, 4) and per_position[0, 0] == 0
    flat = stable_max_cross_entropy(logits.permute(0, 2, 1).reshape(12, 5), target.reshape(12), reduction="none")
    assert torch.allclose(per_position.reshape(12), flat)
    mean = stable_max_cross_entropy(logits, target)
    assert mean.item() == pytest.approx(flat.sum().item() / 11, rel=1e-6)
    single = stable_max_cross_entropy(torch.tensor([0.0, 1.0, -1.0]), torch.tensor(1))
    assert single.item() == pytest.approx(-math.log(4 / 7), rel=1e-6)
