"""Softmax collapse, zero loss and NLM alignment (Prieto et al. 2025) on constructed inputs."""

import math

import pytest
import torch

from stablelab.signals import nlm_alignment, softmax_collapse_fraction
from stablelab.signals.collapse import cosine_similarity, zero_loss_fraction

# float32: 1 + d rounds to 1 when d < 2^-24 (half an ulp of 1). exp(-30) = 9.4e-14 is absorbed,
# exp(-10) = 4.5e-5 is not. In float64 (half ulp 2^-53 = 1.1e-16) exp(-30) is not absorbed.
ABSORBED = [30.0, 0.0, 0.0]
KEPT = [10.0, 0.0, 0.0]


def test_collapse_fraction_float32_absorption():
    logits = torch.tensor([ABSORBED, KEPT, ABSORBED, KEPT])
    assert 2 * math.exp(-30) < 2 ** -24 < math.exp(-10)  # the premise of the construction
    assert softmax_collapse_fraction(logits, dtype=torch.float32) == 0.5


def test_collapse_fraction_depends_on_precision():
    logits = torch.tensor([ABSORBED, ABSORBED], dtype=torch.float64)
    assert softmax_collapse_fraction(logits, dtype=torch.float32) == 1.0
    assert softmax_collapse_fraction(logits, dtype=torch.float64) == 0.0
    # float64 absorbs a gap of 40: 2 exp(-40) = 8.5e-18 < 2^-53
    assert softmax_collapse_fraction(torch.tensor([[40.0, 0.0, 0.0]]), dtype=torch.float64) == 1.0


def test_collapse_fraction_is_shift_invariant_and_bounded():
    logits = torch.tensor([ABSORBED, KEPT]) + 1000.0
    assert softmax_collapse_fraction(logits) == 0.5
    assert softmax_collapse_fraction(torch.zeros(5, 4)) == 0.0  # uniform logits: sum is 4


def test_zero_loss_fraction_matches_collapse_for_the_correct_class():
    logits = torch.tensor([ABSORBED, KEPT, ABSORBED])
    # sample 0: collapsed and correct -> loss exactly 0; sample 2: collapsed but wrong -> loss 30
    target = torch.tensor([0, 0, 1])
    assert zero_loss_fraction(logits, target) == pytest.approx(1 / 3)


def test_nlm_alignment_is_one_for_a_gradient_parallel_to_the_weights():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False), torch.nn.Linear(3, 2, bias=False))
    first, second = model[0].weight, model[1].weight
    first.grad = 2.5 * first.detach().clone()
    second.grad = -0.1 * second.detach().clone()
    cos = nlm_alignment(model)
    assert cos["0.weight"] == pytest.approx(1.0, abs=1e-12)
    assert cos["1.weight"] == pytest.approx(-1.0, abs=1e-12)


def test_nlm_alignment_orthogonal_and_hand_computed():
    w = torch.tensor([1.0, 0.0])
    grads = {"w": torch.tensor([0.0, 3.0]), "v": torch.tensor([1.0, 1.0])}
    out = nlm_alignment({"w": w, "v": w}, gradients=grads)
    assert out["w"] == pytest.approx(0.0, abs=1e-12)
    assert out["v"] == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert math.isnan(cosine_similarity(torch.zeros(2), w))


def test_nlm_alignment_skips_parameters_without_gradient():
    layer = torch.nn.Linear(3, 2)
    layer.weight.grad = layer.weight.detach().clone()
    assert set(nlm_alignment(layer)) == {"weight"}
