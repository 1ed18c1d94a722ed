"""8-bit optimizer states: the dynamic map, block-wise quantisation and AdamW8bit.

References: Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization" (arXiv 2110.02861);
bitsandbytes 0.50 (`create_dynamic_map`, `quantize_blockwise` / `dequantize_blockwise`, `AdamW8bit`)
and torchao 0.18 (`torchao.optim.AdamW8bit`), both on CPU, where installed.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from stablelab.optim.adamw8bit import AdamW8bit
from stablelab.optim.blockwise import (bucket_table, dequantize_blockwise, dynamic_map, map_midpoints, nearest_code,
                                       quantize_blockwise)
from optim_test_helpers import flat as _flat, tiny_model as _model, train as _train


def _bnb():
    try:
        import bitsandbytes
        import bitsandbytes.functional
    except Exception:  # noqa: BLE001 - missing, or no usable native library
        pytest.skip("bitsandbytes is not usable here")
    return bitsandbytes


def _spread(n: int, seed: int = 0, signed: bool = True) -> torch.Tensor:
    """Values spread over eight decades, as optimizer moments are."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=generator) * torch.logspace(-8, 0, n)[torch.randperm(n, generator=generator)]
    return x if signed else x.abs()


# -- the dynamic map ---------------------------------------------------------------------------
@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_by_hand(signed):
    code = dynamic_map(signed)
    assert code.shape == (256,) and code.dtype == torch.float32
    assert torch.all(code[1:] > code[:-1])  # sorted, no repeats
    assert code.max() == 1.0 and (code == 0).sum() == 1
    # top decade: the midpoints of [0.1, 1] cut into 64 (signed) or 128 (unsigned) parts
    parts = 64 if signed else 128
    top = torch.linspace(0.1, 1.0, parts + 1)
    assert torch.equal(code[-parts - 1:-1], (top[:-1] + top[1:]) / 2)
    # bottom decade: one value (signed) or two (unsigned) in [1e-7, 1e-6]
    positive = code[code > 0]
    assert positive.min() == pytest.approx(0.55e-6 if signed else 0.325e-6, rel=1e-6)
    if signed:
        assert code.min() == pytest.approx(-(1.0 - 0.9 / 128), rel=1e-6)  # -1 itself is not in the map
        assert torch.equal(code[:127], -positive[:-1].flip(0))
    else:
        assert code.min() == 0.0


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_equals_bitsandbytes(signed):
    functional = _bnb().functional
    assert torch.equal(dynamic_map(signed), functional.create_dynamic_map(signed=signed))


# -- quantise / dequantise ---------------------------------------------------------------------
def test_round_trip_of_a_known_tensor_within_the_map_gap():
    code = dynamic_map(True)
    block = torch.zeros(256)
    block[0], block[1], block[2], block[3] = 2.0, 0.3, -0.01, 1e-5  # absmax 2
    x_hat = dequantize_blockwise(*quantize_blockwise(block, code, 256), code, 256)
    assert x_hat[0] == 2.0 and torch.all(x_hat[4:] == 0)
    for i in (1, 2, 3):
        scaled = block[i] / 2.0
        above = code[code >= scaled].min()
        below = code[code <= scaled].max()
        gap = float(above - below)  # the map's gap around the value
        assert abs(float(x_hat[i] - block[i])) <= gap / 2 * 2.0 + 1e-12  # half the gap times the absmax
    # by hand: 0.3 / 2 = 0.15 lies in the top decade, whose 64 parts of [0.1, 1] have width 0.9 / 64
    assert abs(float(x_hat[1]) - 0.3) <= 0.9 / 64 / 2 * 2.0


@pytest.mark.parametrize("n", [1000, 4096, 256 * 7 + 3, 5])
@pytest.mark.parametrize("signed", [True, False])
def test_quantise_is_nearest_and_error_bounded(n, signed):
    code = dynamic_map(signed)
    x = _spread(n, seed=n, signed=signed)
    codes, absmax = quantize_blockwise(x, code, 256)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape and absmax.shape == (-(-n // 256),)
    scale = absmax.repeat_interleave(256)[:n]
    assert torch.equal(absmax, torch.stack([b.abs().max() for b in x.split(256)]))
    nearest = (x.unsqueeze(1) / scale.unsqueeze(1) - code).abs().argmin(dim=1)
    x_hat = dequantize_blockwise(codes, absmax, code, 256)
    # no map value is closer than the chosen one (ties may pick either neighbour)
    assert torch.all((x_hat - x).abs() <= (code[nearest] * scale - x).abs() * (1 + 1e-6) + 1e-30)


@pytest.mark.parametrize("signed", [True, False])
def test_bucket_table_equals_bucketize(signed):
    midpoints = map_midpoints(dynamic_map(signed))
    table = bucket_table(midpoints)
    x = _spread(100_000, seed=1, signed=signed)
    x = x / x.abs().max()
    edges = torch.cat([midpoints, torch.nextafter(midpoints, torch.tensor(2.0)),
                       torch.nextafter(midpoints, torch.tensor(-2.0)),
                       torch.tensor([0.0, -0.0, 1.0, -1.0, 1.0000001, -1.0000001, 2.0, -2.0, -0.5, 1e-30, -1e-30])])
    for values in (x, edges):
        assert torch.equal(nearest_code(values, midpoints, table).int(), nearest_code(values, midpoints))


def test_quantise_equals_bitsandbytes_pure_torch_kernel_and_dequantise_its_cpu_kernel():
    bnb = _bnb()
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    # bitsandbytes' pure-torch kernel (backends/default/ops.py): bucketize against the midpoints
    composite = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    for signed in (True, False):
        code = dynamic_map(signed)
        midpoints = map_midpoints(code)
        for n in (256 * 16, 256 * 5 + 17):
            x = _spread(n, seed=n, signed=signed)
            ours = quantize_blockwise(x, code, 256, midpoints=midpoints, table=bucket_table(midpoints))
            theirs = op.redispatch(composite, x, code, 256)
            assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
            # its native CPU dequantisation gives the same floats as ours
            state = bnb.functional.QuantState(absmax=ours[1], code=code, blocksize=256, dtype=torch.float32)
            assert torch.equal(dequantize_blockwise(*ours, code, 256),
                               bnb.functional.dequantize_blockwise(ours[0], state))


def test_quantise_never_worse_than_bitsandbytes_native_cpu_kernel():
    """bitsandbytes' native CPU quantiser (libbitsandbytes_cpu) is an approximate search: it sends
    values below about 1e-5 * absmax to coarser codes. Ours is exactly nearest, so never farther."""
    functional = _bnb().functional
    for signed in (True, False):
        code = dynamic_map(signed)
        x = _spread(256 * 8, seed=3, signed=signed)
        codes, absmax = quantize_blockwise(x, code, 256)
        theirs, state = functional.quantize_blockwise(x, code=code, blocksize=256)
        assert torch.equal(absmax, state.absmax)
        ours_error = (dequantize_blockwise(codes, absmax, code, 256) - x).abs()
        theirs_error = (functional.dequantize_blockwise(theirs, state) - x).abs()
        assert torch.all(ours_error <= theirs_error * (1 + 1e-6) + 1e-30)


# -- AdamW8bit ---------------------------------------------------------------------------------


def test_state_layout_and_bytes_per_parameter():
    model = _model()
    optimizer = AdamW8bit(model.parameters())
    _train(model, optimizer, 1)
    weight, bias = model[0].weight, model[0].bias
    assert set(optimizer.state[weight]) == {"step", "exp_avg_codes", "exp_avg_absmax", "exp_avg_sq_codes",
                                            "exp_avg_sq_absmax"}
    assert optimizer.state[weight]["exp_avg_codes"].dtype == torch.uint8
    assert optimizer.state[weight]["exp_avg_absmax"].shape == (weight.numel() // 256,)
    assert optimizer.state[bias]["exp_avg"].dtype == torch.float32  # 128 < min_8bit_size: float32 state
    big = [torch.nn.Parameter(torch.randn(1024, 1024))]
    optimizer = AdamW8bit(big)
    big[0].grad = torch.randn_like(big[0])
    optimizer.step()
    assert optimizer.state_bytes_per_parameter() == pytest.approx(2 + 8 / 256)
    assert optimizer.state_bytes_per_parameter() <= 2.1
    fp32 = torch.optim.AdamW(big)
    fp32.step()
    held = sum(t.numel() * t.element_size() for t in fp32.state[big[0]].values() if t.dim())
    assert held / big[0].numel() == 8


def test_first_step_is_the_adamw_step_up_to_quantisation():
    """At step 1, m = (1 - b1) g and v = (1 - b2) g^2 are used unquantised: identical to AdamW."""
    torch.manual_seed(0)
    p8 = torch.nn.Parameter(torch.randn(128, 64))
    p32 = torch.nn.Parameter(p8.detach().clone())
    p8.grad = torch.randn_like(p8)
    p32.grad = p8.grad.clone()
    AdamW8bit([p8], lr=1e-2).step()
    torch.optim.AdamW([p32], lr=1e-2, foreach=False).step()
    torch.testing.assert_close(p8, p32, rtol=0, atol=1e-7)


def test_trajectory_close_to_fp32_adamw():
    """200 steps, lr 1e-3: the 8-bit moments carry a relative error of a few 1e-3 (the top decade's
    gap, 0.9 / 64, halved) and the update divides m by sqrt(v), so the parameters drift from fp32
    AdamW by a small fraction of their total movement; we require under 5% of it, and the loss within 2%."""
    start = _model()
    m8, m32 = copy.deepcopy(start), copy.deepcopy(start)
    losses8 = _train(m8, AdamW8bit(m8.parameters(), min_8bit_size=1024), 200)
    losses32 = _train(m32, torch.optim.AdamW(m32.parameters()), 200)
    moved = (_flat(m32) - _flat(start)).norm()
    assert (_flat(m8) - _flat(m32)).norm() < 0.05 * moved
    assert losses8[-1] == pytest.approx(losses32[-1], rel=0.02)
    assert losses8[-1] < 0.7 * losses8[0]


def test_trajectory_close_to_bitsandbytes_adamw8bit():
    """bitsandbytes' CPU update does the same math (dequantise, step in float32, re-quantise) with
    its approximate native quantiser; with 8-bit moments on every tensor the runs stay within 1% of
    the total movement over 100 steps."""
    bnb = _bnb()
    start = _model()
    ours, theirs = copy.deepcopy(start), copy.deepcopy(start)
    _train(ours, AdamW8bit(ours.parameters(), min_8bit_size=1024), 100)
    _train(theirs, bnb.optim.AdamW8bit(theirs.parameters(), min_8bit_size=1024), 100)
    moved = (_flat(theirs) - _flat(start)).norm()
    assert (_flat(ours) - _flat(theirs)).norm() < 0.01 * moved


def test_trajectory_close_to_torchao_adamw8bit():
    """torchao's AdamW8bit (torch.compile'd on CPU) uses its own signed/unsigned dynamic maps and
    blocks of 256 and exact nearest rounding. Ours rounds through the one-gather lookup (a code may
    flip next to a map midpoint), which over 50 steps puts the runs 0.67% of the total movement apart
    (0.07% with exact rounding); each is 1.25% from fp32 AdamW. We require under 1%, i.e. closer to
    each other than either is to fp32."""
    try:
        from torchao.optim import AdamW8bit as TorchaoAdamW8bit
    except Exception:  # noqa: BLE001
        pytest.skip("torchao is not usable here")
    start = _model()
    ours, theirs = copy.deepcopy(start), copy.deepcopy(start)
    _train(ours, AdamW8bit(ours.parameters(), min_8bit_size=4096), 50)
    _train(theirs, TorchaoAdamW8bit(theirs.parameters(), block_size=256), 50)
    m32 = copy.deepcopy(start)
    _train(m32, torch.optim.AdamW(m32.parameters()), 50)
    moved = (_flat(theirs) - _flat(start)).norm()
    assert (_flat(ours) - _flat(theirs)).norm() < 0.01 * moved
    assert (_flat(ours) - _flat(theirs)).norm() < (_flat(theirs) - _flat(m32)).norm()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_is_bit_identical(dtype):
    start = _model(dtype)
    uninterrupted = copy.deepcopy(start)
    optimizer = AdamW8bit(uninterrupted.parameters(), min_8bit_size=1024)
    _train(uninterrupted, optimizer, 10, seed=1)
    _train(uninterrupted, optimizer, 10, seed=2)

    first = copy.deepcopy(start)
    optimizer = AdamW8bit(first.parameters(), min_8bit_size=1024)
    _train(first, optimizer, 10, seed=1)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _model(dtype, seed=5)
    resumed.load_state_dict(saved["model"])
    optimizer = AdamW8bit(resumed.parameters(), min_8bit_size=1024)
    optimizer.load_state_dict(saved["optimizer"])
    weight_state = optimizer.state[resumed[0].weight]
    assert weight_state["exp_avg_codes"].dtype == torch.uint8
    assert weight_state["exp_avg_absmax"].dtype == torch.float32
    assert optimizer.state[resumed[0].bias]["exp_avg"].dtype == torch.float32
    for name, value in weight_state.items():
        original = saved["optimizer"]["state"][0][name]
        assert torch.equal(value, original) if torch.is_tensor(value) else value == original
    _train(resumed, optimizer, 10, seed=2)
    for a, b in zip(uninterrupted.parameters(), resumed.parameters()):
        assert a.dtype == dtype and torch.equal(a, b)


def test_bfloat16_parameters_train_with_float32_moments():
    model = _model(torch.bfloat16)
    optimizer = AdamW8bit(model.parameters(), min_8bit_size=1024)
    losses = _train(model, optimizer, 50)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert optimizer.state[model[0].bias]["exp_avg"].dtype == torch.float32
    assert losses[-1] < 0.8 * losses[0]


def test_constructor_validation():
    params = [torch.nn.Parameter(torch.zeros(3))]
    for bad in (dict(lr=-1.0), dict(eps=-1.0), dict(weight_decay=-1.0), dict(betas=(1.0, 0.9)), dict(block_size=0)):
        with pytest.raises(ValueError):
            AdamW8bit(params, **bad)
    defaults = AdamW8bit(params).defaults
    assert (defaults["lr"], defaults["betas"], defaults["eps"], defaults["weight_decay"]) == (1e-3, (0.9, 0.999),
                                                                                           1e-8, 1e-2)
    assert (defaults["block_size"], defaults["min_8bit_size"]) == (256, 4096)
