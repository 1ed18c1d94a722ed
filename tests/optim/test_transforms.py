"""The gradient transforms (lists of tensors) on hand-worked numbers, and the global-norm clip
against torch.nn.utils.clip_grad_norm_ (the proxy run's and the guard's clip)."""

import math

import pytest
import torch

from stablelab.optim.transforms import (
    adaptive_max_clip,
    clip_by_global_norm,
    normalize_by_norm,
    orthogonal_gradient,
    orthogonal_projection,
    spike_clip,
    spike_clip_active,
)


def test_spike_clip_replaces_spikes_by_sign_times_sqrt_theta_v():
    # theta = 4, v = [1, 1, 0.25, 0]: the bound sqrt(theta v) is [2, 2, 1, 0]
    grad = torch.tensor([3.0, -1.5, -5.0, 0.0])
    v = torch.tensor([1.0, 1.0, 0.25, 0.0])
    # 9 > 4 -> 2;  2.25 <= 4 -> unchanged;  25 > 1 -> -1;  0 > 0 is false -> 0
    (clipped, other) = spike_clip([grad, -grad], [v, v], 4.0)
    assert torch.equal(clipped, torch.tensor([2.0, -1.5, -1.0, 0.0]))
    assert torch.equal(other, torch.tensor([-2.0, 1.5, 1.0, 0.0]))
    assert torch.equal(grad, torch.tensor([3.0, -1.5, -5.0, 0.0]))  # input untouched


def test_spike_clip_waits_for_an_informative_second_moment():
    # official SPAM: active when t >= 20 and t mod 500 >= 20
    assert [spike_clip_active(t, 500, 20) for t in (19, 20, 499, 500, 519, 520)] == [
        False, True, True, False, False, True]


def test_adaptive_max_clip_rescales_only_entries_above_the_bound():
    grad = torch.tensor([4.0, -2.0, 1.0])
    # bound 2.5, max|g| 4: entries above 2.5 are multiplied by 2.5 / 4
    (clipped,) = adaptive_max_clip([grad], [torch.tensor(4.0)], [torch.tensor(2.5)])
    assert torch.equal(clipped, torch.tensor([2.5, -2.0, 1.0]))


def test_normalize_by_norm_gives_the_ratio_of_norm_averages():
    grad = torch.tensor([3.0, 4.0])  # ||g|| = 5
    out, zero = normalize_by_norm([grad, torch.zeros(2)], torch.tensor([5.0, 0.0]), torch.tensor([2.0, 2.0]),
                                  torch.tensor([16.0, 16.0]), eps=0.0)
    # g / 5 * 2 / sqrt(16) = g / 10
    torch.testing.assert_close(out, torch.tensor([0.3, 0.4]))
    assert math.isclose(torch.linalg.vector_norm(out).item(), 0.5, rel_tol=1e-6)
    assert torch.equal(zero, torch.zeros(2))  # a zero gradient stays zero (official: no 0/0)


def test_orthogonal_projection_is_the_per_tensor_projection_on_a_list():
    w = [torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 1.0]])]
    g = [torch.tensor([1.0, 1.0]), torch.tensor([[2.0, 0.0]])]
    out = orthogonal_projection(g, w)
    # g - <w,g>/<w,w> w = [0, 1] (norm 1), rescaled to ||g|| = sqrt(2); [[1, -1]] keeps norm 2
    torch.testing.assert_close(out[0], torch.tensor([0.0, math.sqrt(2)]))
    torch.testing.assert_close(out[1], torch.tensor([[math.sqrt(2), -math.sqrt(2)]]))
    for o, wi, gi in zip(out, w, g):
        assert torch.equal(o, orthogonal_gradient(wi, gi))


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
@pytest.mark.parametrize("foreach", [None, False])
def test_clip_by_global_norm_is_a_drop_in_for_clip_grad_norm(max_norm, foreach):
    """Same parameters in, same gradients out, same total norm (a tensor), None grads skipped."""
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(shape)) for shape in ((4, 3), (5,), (2,))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for p, q in zip(ours[:2], theirs[:2]):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    total = clip_by_global_norm(ours, max_norm, foreach=foreach)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert torch.is_tensor(total) and total.dim() == 0
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
    for p, q in zip(ours[:2], theirs[:2]):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
    assert ours[2].grad is None
    if max_norm == 0.5:
        norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours[:2]]))
        assert norm.item() == pytest.approx(0.5 * expected.item() / (expected.item() + 1e-6), rel=1e-5)


def test_clip_by_global_norm_takes_gradient_lists_and_a_known_norm():
    grads = [torch.tensor([3.0, 0.0]), None, torch.tensor([4.0])]  # global norm 5
    total = clip_by_global_norm(grads, 1.0)
    assert total.item() == pytest.approx(5.0)
    factor = 1.0 / (5.0 + 1e-6)  # torch's epsilon
    torch.testing.assert_close(grads[0], torch.tensor([3.0 * factor, 0.0]))
    torch.testing.assert_close(grads[2], torch.tensor([4.0 * factor]))
    # with the norm given it is not recomputed: scaling by min(1, 2 / (10 + 1e-6))
    again = [torch.tensor([1.0])]
    assert clip_by_global_norm(again, 2.0, total_norm=torch.tensor(10.0)).item() == 10.0
    torch.testing.assert_close(again[0], torch.tensor([2.0 / (10.0 + 1e-6)]))
    assert clip_by_global_norm([], 1.0).item() == 0.0
