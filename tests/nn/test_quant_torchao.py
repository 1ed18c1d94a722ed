"""Our fake-quantisation grid against torchao's QAT fake quantizer (torchao 0.18 on CPU): symmetric
per-group int4 weights and int8 activations agree exactly; the backward differs only where
torchao's clamp zeroes the gradient (the largest positive element of a group)."""

import pytest
import torch
from torch import nn

qat = pytest.importorskip("torchao.quantization.qat")

from stablelab.nn import FakeQuantLinear, fake_quantize, quantize_model  # noqa: E402


def _torchao(bits: int, group_size: int):
    dtype = {4: torch.int4, 8: torch.int8}[bits]
    return qat.IntxFakeQuantizer(qat.IntxFakeQuantizeConfig(dtype, group_size=group_size,
                                                            is_symmetric=True))


@pytest.mark.parametrize("bits, group_size", [(4, 32), (4, 8), (8, 32), (8, 64)])
def test_grids_agree_exactly(bits, group_size):
    torch.manual_seed(bits * group_size)
    x = torch.randn(32, 64) * torch.logspace(-2, 2, 64)
    x[0, :group_size] = 0.0  # an all-zero group
    x[1, :group_size] = x[1, :group_size].clamp(-7, 7)
    x[1, 0] = 7.5  # scale exactly 1: the positive maximum is a tie, 7.5 -> 8 -> clamped to 7
    assert torch.equal(fake_quantize(x, bits, group_size), _torchao(bits, group_size)(x))


def test_fake_quantised_linear_matches_torchao_fake_quantized_linear():
    torch.manual_seed(0)
    linear = nn.Linear(64, 16, bias=False)
    theirs = qat.FakeQuantizedLinear(
        64, 16, bias=False,
        activation_config=qat.IntxFakeQuantizeConfig(torch.int8, group_size=32, is_symmetric=True),
        weight_config=qat.IntxFakeQuantizeConfig(torch.int4, group_size=32, is_symmetric=True))
    with torch.no_grad():
        theirs.weight.copy_(linear.weight)
    ours = quantize_model(linear, weight_bits=4, activation_bits=8, group_size=32)
    assert isinstance(ours, FakeQuantLinear)
    x = torch.randn(8, 64)  # torchao's per-group path takes 2-d inputs
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)


def test_backward_differs_only_where_torchao_clamps():
    torch.manual_seed(1)
    x = torch.randn(8, 32)
    x[0, :8] = x[0, :8].clamp(-7, 7)
    x[0, 3] = 7.5  # scale exactly 1, 7.5 rounds to 8 and torchao's clamp bites
    ours = x.clone().requires_grad_(True)
    theirs = x.clone().requires_grad_(True)
    fake_quantize(ours, 4, 8).sum().backward()
    _torchao(4, 8)(theirs).sum().backward()
    assert torch.equal(ours.grad, torch.ones_like(x))  # straight through everywhere
    # torchao: round's gradient is 1 (times 1/scale, times scale: 1 up to an ulp), 0 where the
    # rounded value left the grid before the clamp
    groups = x.reshape(-1, 8)
    scale = groups.abs().amax(1, keepdim=True) / 7.5
    clamped = (torch.round(groups * (1.0 / scale)) > 7).reshape(x.shape)
    assert clamped[0, 3]
    assert torch.all(theirs.grad[clamped] == 0)
    assert torch.allclose(theirs.grad[~clamped], torch.ones(int((~clamped).sum())), atol=1e-6)
