"""The gradient transforms on hand-worked numbers."""

import math

import torch

from stablelab.optim.transforms import (
    adaptive_max_clip,
    norm_normalise,
    spike_clip,
    spike_clip_active,
)


def test_spike_clip_replaces_spikes_by_sign_times_sqrt_theta_v():
    # theta = 4, v = [1, 1, 0.25, 0]: the bound sqrt(theta v) is [2, 2, 1, 0]
    grad = torch.tensor([3.0, -1.5, -5.0, 0.0])
    v = torch.tensor([1.0, 1.0, 0.25, 0.0])
    # 9 > 4 -> 2;  2.25 <= 4 -> unchanged;  25 > 1 -> -1;  0 > 0 is false -> 0
    assert torch.equal(spike_clip(grad, v, 4.0), torch.tensor([2.0, -1.5, -1.0, 0.0]))
    assert torch.equal(grad, torch.tensor([3.0, -1.5, -5.0, 0.0]))  # input untouched


def test_spike_clip_waits_for_an_informative_second_moment():
    # official SPAM: active when t >= 20 and t mod 500 >= 20
    assert [spike_clip_active(t, 500, 20) for t in (19, 20, 499, 500, 519, 520)] == [
        False, True, True, False, False, True]


def test_adaptive_max_clip_rescales_only_entries_above_the_bound():
    grad = torch.tensor([4.0, -2.0, 1.0])
    # bound 2.5, max|g| 4: entries above 2.5 are multiplied by 2.5 / 4
    clipped = adaptive_max_clip(grad, torch.tensor(4.0), torch.tensor(2.5))
    assert torch.equal(clipped, torch.tensor([2.5, -2.0, 1.0]))


def test_norm_normalise_gives_the_ratio_of_norm_averages():
    grad = torch.tensor([3.0, 4.0])  # ||g|| = 5
    out = norm_normalise(grad, torch.tensor(5.0), torch.tensor(2.0), torch.tensor(16.0), eps=0.0)
    # g / 5 * 2 / sqrt(16) = g / 10
    torch.testing.assert_close(out, torch.tensor([0.3, 0.4]))
    assert math.isclose(torch.linalg.vector_norm(out).item(), 0.5, rel_tol=1e-6)
