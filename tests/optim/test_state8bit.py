"""The chunked 8-bit state machinery (stablelab.optim.state8bit) and the one-gather rounding it uses.

Expectations come from the specification functions: exact nearest rounding (`torch.bucketize`
against the map's midpoints, `quantize_blockwise` / `dequantize_blockwise`) and the bucket centre
computed by hand from the float32 bits.
"""

from __future__ import annotations

import pytest
import torch

from stablelab.optim.blockwise import (bucket_centre, dequantize_blockwise, dynamic_map, lookup_code, lookup_table,
                                       map_midpoints, nearest_code, quantize_blockwise)
from stablelab.optim.state8bit import (Scratch, chunk_ranges, dequantize_chunk, init_moments, maps_on,
                                       quantize_chunk, zero_moments)


def _spread(n: int, seed: int = 0, signed: bool = True) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=generator) * torch.logspace(-9, 0, n)[torch.randperm(n, generator=generator)]
    x = x / x.abs().max()
    return x if signed else x.abs()


def test_bucket_centre_by_hand():
    # 1.0 = 0x3F800000: low 13 bits set to 1 << 12 gives 1 + 2^-11 (mantissa bit 11 of 23)
    assert float(bucket_centre(torch.tensor([1.0]))) == 1.0 + 2.0 ** -11
    assert float(bucket_centre(torch.tensor([-1.0]))) == -(1.0 + 2.0 ** -11)
    x = _spread(10_000, seed=3)
    assert torch.all((bucket_centre(x) - x).abs() <= x.abs() * 2.0 ** -11)


@pytest.mark.parametrize("signed", [True, False])
def test_lookup_code_is_nearest_code_of_the_bucket_centre(signed):
    midpoints = map_midpoints(dynamic_map(signed))
    table = lookup_table(midpoints)
    assert table.shape == (1 << 19,) and table.dtype == torch.uint8
    x = _spread(200_000, seed=1, signed=signed)
    edges = torch.cat([midpoints, torch.nextafter(midpoints, torch.tensor(2.0)),
                       torch.nextafter(midpoints, torch.tensor(-2.0)),
                       torch.tensor([0.0, -0.0, 1.0, -1.0, 1.0000001, -1.0000001, -0.5, 1e-30, -1e-30])])
    for values in (x, edges):
        expected = nearest_code(bucket_centre(values), midpoints).clamp(0, 255)
        assert torch.equal(lookup_code(values, table).long(), expected.long())


@pytest.mark.parametrize("signed", [True, False])
def test_lookup_rounding_error_is_half_the_gap_plus_a_bucket(signed):
    code = dynamic_map(signed)
    midpoints = map_midpoints(code)
    x = _spread(200_000, seed=2, signed=signed)
    exact = nearest_code(x, midpoints)
    fast = lookup_code(x, lookup_table(midpoints)).long()
    assert (fast != exact).float().mean() < 0.01  # only next to a midpoint
    # |map[fast] - x| <= |map[exact] - x| + 2^-11 |x|: nearest rounding of a point within 2^-11 |x|
    assert torch.all((code[fast] - x).abs() <= (code[exact] - x).abs() + 2.0 ** -10 * x.abs() + 1e-12)


@pytest.mark.parametrize("numel,block_size,chunk", [(10_000, 256, 1024), (1000, 256, 512), (4096, 64, 4096),
                                                     (777, 100, 300)])
@pytest.mark.parametrize("signed", [True, False])
def test_chunked_quantise_matches_whole_tensor_blocks(numel, block_size, chunk, signed):
    """Chunks cut at block edges give the whole-tensor absmax exactly and codes equal to the lookup rounding."""
    maps = maps_on(torch.device("cpu"))
    x = _spread(numel, seed=4, signed=signed) * 3.0
    codes = torch.empty(numel, dtype=torch.uint8)
    absmax = torch.empty(-(-numel // block_size))
    scratch = Scratch(torch.device("cpu"), 2, chunk)
    ranges = chunk_ranges(numel, block_size, chunk)
    assert ranges[0][0] == 0 and ranges[-1][1] == numel
    assert all(start % block_size == 0 for start, _ in ranges)
    for start, stop in ranges:
        quantize_chunk(x[start:stop].clone(), codes, absmax, start, maps.table(signed), block_size,
                       scratch.floats[-1], scratch.keys)
    exact_codes, exact_absmax = quantize_blockwise(x, maps.map(signed), block_size)
    assert torch.equal(absmax, exact_absmax)
    scale = exact_absmax.repeat_interleave(block_size)[:numel]
    expected = lookup_code((x / scale.clamp(min=torch.finfo(torch.float32).tiny)).contiguous(), maps.table(signed))
    # x * (1 / absmax) vs x / absmax may differ by an ulp: compare codes with the exact rounding instead
    assert (codes != exact_codes).float().mean() < 0.01
    assert (codes != expected).float().mean() < 0.001
    out = torch.empty(numel)
    for start, stop in ranges:
        out[start:stop] = dequantize_chunk(codes, absmax, start, stop, maps.map(signed), block_size,
                                           scratch.floats[0], scratch.keys)
    assert torch.equal(out, dequantize_blockwise(codes, absmax, maps.map(signed), block_size))


def test_init_and_zero_moments():
    maps = maps_on(torch.device("cpu"))
    big, small = torch.zeros(64, 80), torch.zeros(10)
    keys = {"m": True, "v": False}
    state_big, state_small = {}, {}
    init_moments(big, state_big, keys, 256, 4096)
    init_moments(small, state_small, keys, 256, 4096)
    assert set(state_big) == {"m_codes", "m_absmax", "v_codes", "v_absmax"}
    assert set(state_small) == {"m", "v"} and state_small["m"].dtype == torch.float32
    assert state_big["m_absmax"].shape == (20,)
    zero = dequantize_blockwise(state_big["m_codes"], state_big["m_absmax"], maps.signed, 256)
    assert torch.equal(zero, torch.zeros(64, 80))
    state_big["m_codes"].fill_(200)
    state_big["m_absmax"].fill_(1.0)
    zero_moments(state_big, keys, big.device)
    assert torch.equal(dequantize_blockwise(state_big["m_codes"], state_big["m_absmax"], maps.signed, 256),
                       torch.zeros(64, 80))
