"""StableSPAM8bit and AdEMAMix8bit: the float32 optimizers with 8-bit block-wise moments.

Expectations: the float32-state optimizer of the same name (same math, the moments unrounded), the
map's resolution for the stored moments, and bitsandbytes 0.50's AdEMAMix8bit on CPU where it runs.
Tolerances are stated per test; the tiny model and loop are test_8bit's (copied).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from stablelab.optim import AdEMAMix, AdEMAMix8bit, StableSPAM, StableSPAM8bit, create
from stablelab.optim.blockwise import dequantize_blockwise, dynamic_map
from optim_test_helpers import flat as _flat, tiny_model as _model, train as _train


def _bnb():
    try:
        import bitsandbytes
    except Exception:  # noqa: BLE001 - missing, or no usable native library
        pytest.skip("bitsandbytes is not usable here")
    return bitsandbytes



PAIRS = [(StableSPAM8bit, StableSPAM, {"reset_interval": 50}), (AdEMAMix8bit, AdEMAMix, {})]
IDS = ["stable_spam", "ademamix"]


@pytest.mark.parametrize("eight, full, kwargs", PAIRS, ids=IDS)
def test_first_step_is_the_float32_step(eight, full, kwargs):
    """Moments start at zero and the update uses the float32 moments before they are rounded."""
    p8 = torch.nn.Parameter(torch.randn(64, 80, generator=torch.Generator().manual_seed(0)))
    p32 = torch.nn.Parameter(p8.detach().clone())
    grad = torch.randn(64, 80, generator=torch.Generator().manual_seed(1))
    p8.grad, p32.grad = grad.clone(), grad.clone()
    eight([p8], lr=1e-2, **kwargs).step()
    full([p32], lr=1e-2, foreach=False, **kwargs).step()
    torch.testing.assert_close(p8, p32, rtol=0, atol=1e-7)


@pytest.mark.parametrize("eight, full, kwargs", PAIRS, ids=IDS)
def test_stored_moments_are_the_float32_moments_within_the_map_resolution(eight, full, kwargs):
    """After 3 steps from the same start, each stored moment is within (half the top-decade gap of
    the map + 2^-11) x its block's absmax of the moment the float32 optimizer holds after the same
    3 steps from the dequantised state of step 2 (i.e. one rounding of error per step)."""
    p8 = torch.nn.Parameter(torch.randn(64, 80, generator=torch.Generator().manual_seed(0)))
    opt8 = eight([p8], lr=1e-2, **kwargs)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        p8.grad = torch.randn(64, 80, generator=generator)
        opt8.step()
    p32 = torch.nn.Parameter(p8.detach().clone())
    opt32 = full([p32], lr=1e-2, foreach=False, **kwargs)
    # rebuild the float32 state from the 8-bit one, take one more step with both, compare the moments
    opt32.state[p32].update(step=3, **{k: v.clone() for k, v in opt8.state[p8].items()
                                       if torch.is_tensor(v) and v.dim() == 0})
    for key, signed in opt8.moments.items():
        s = opt8.state[p8]
        opt32.state[p32][key] = dequantize_blockwise(s[f"{key}_codes"], s[f"{key}_absmax"], dynamic_map(signed), 256)
    p8.grad = p32.grad = torch.randn(64, 80, generator=generator)
    opt8.step()
    opt32.step()
    for key, signed in opt8.moments.items():
        s = opt8.state[p8]
        stored = dequantize_blockwise(s[f"{key}_codes"], s[f"{key}_absmax"], dynamic_map(signed), 256)
        gap = 0.9 / (64 if signed else 128)
        bound = (gap / 2 + 2.0 ** -11) * s[f"{key}_absmax"].repeat_interleave(256).view(64, 80) * (1 + 1e-5)
        assert torch.all((stored - opt32.state[p32][key]).abs() <= bound + 1e-30), key
    torch.testing.assert_close(p8, p32, rtol=0, atol=1e-6)


@pytest.mark.parametrize("eight, full, kwargs", PAIRS, ids=IDS)
def test_trajectory_tracks_the_float32_state_optimizer(eight, full, kwargs):
    """200 steps at lr 1e-3 with 8-bit moments on every weight (a Stable-SPAM reset every 50): the
    parameters stay within 5% of the float32-state run's total movement (measured: 1.0% Stable-SPAM,
    1.4% AdEMAMix) and the final loss within 2%."""
    start = _model()
    m8, m32 = copy.deepcopy(start), copy.deepcopy(start)
    losses8 = _train(m8, eight(m8.parameters(), min_8bit_size=1024, **kwargs), 200)
    losses32 = _train(m32, full(m32.parameters(), **kwargs), 200)
    moved = (_flat(m32) - _flat(start)).norm()
    assert (_flat(m8) - _flat(m32)).norm() < 0.05 * moved
    assert losses8[-1] == pytest.approx(losses32[-1], rel=0.02)
    assert losses8[-1] < 0.2 * losses8[0]


def test_ademamix8bit_close_to_bitsandbytes():
    """bitsandbytes' AdEMAMix8bit (CPU, its approximate native quantiser, alpha and decay matched):
    100 steps apart by less than 1.5% of the total movement (measured 0.74%), and closer to ours
    than to float32 AdEMAMix (1.2%)."""
    bnb = _bnb()
    start = _model()
    ours, theirs, full = copy.deepcopy(start), copy.deepcopy(start), copy.deepcopy(start)
    _train(ours, AdEMAMix8bit(ours.parameters(), min_8bit_size=1024), 100)
    _train(theirs, bnb.optim.AdEMAMix8bit(theirs.parameters(), min_8bit_size=1024, alpha=2.0, weight_decay=0.0), 100)
    _train(full, AdEMAMix(full.parameters()), 100)
    moved = (_flat(theirs) - _flat(start)).norm()
    apart = (_flat(ours) - _flat(theirs)).norm()
    assert apart < 0.015 * moved
    assert apart < (_flat(theirs) - _flat(full)).norm()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eight, full, kwargs", PAIRS, ids=IDS)
def test_state_dict_round_trip_is_bit_identical(eight, full, kwargs, dtype):
    kwargs = {**kwargs, "reset_interval": 4} if eight is StableSPAM8bit else kwargs  # a reset after resuming
    start = _model(dtype)
    model = copy.deepcopy(start)
    optimizer = eight(model.parameters(), min_8bit_size=1024, **kwargs)
    _train(model, optimizer, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = copy.deepcopy(start)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = eight(resumed.parameters(), min_8bit_size=1024, **kwargs)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    codes_key = f"{next(iter(eight.moments))}_codes"
    assert resumed_optimizer.state[resumed[0].weight][codes_key].dtype == torch.uint8
    for a, b in zip(optimizer.state.values(), resumed_optimizer.state.values()):
        for name, value in a.items():
            assert torch.equal(value, b[name]) if torch.is_tensor(value) else value == b[name]
    _train(model, optimizer, 4, seed=2)
    _train(resumed, resumed_optimizer, 4, seed=2)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert a.dtype == dtype and torch.equal(a, b)


@pytest.mark.parametrize("eight, full, kwargs", PAIRS, ids=IDS)
def test_bytes_per_parameter(eight, full, kwargs):
    """Stable-SPAM: 2 + 8/256 bytes for m and v (+ 12 bytes of 0-d statistics per tensor);
    AdEMAMix, three moments: 3 + 12/256; float32: 8 and 12 (+ the same statistics)."""
    big = [torch.nn.Parameter(torch.zeros(256, 512))]
    opt8, opt32 = eight(big, **kwargs), full([torch.nn.Parameter(torch.zeros(256, 512))], **kwargs)
    for opt in (opt8, opt32):
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        opt.step()
    n = 256 * 512
    scalars = 12 / n if eight is StableSPAM8bit else 0.0
    moments = len(eight.moments)
    assert opt8.state_bytes_per_parameter() == pytest.approx(moments * (1 + 4 / 256) + scalars)
    if eight is StableSPAM8bit:
        assert opt8.state_bytes_per_parameter() <= 2.1
    held32 = sum(t.numel() * t.element_size() for t in opt32.state[opt32.param_groups[0]["params"][0]].values()
                 if torch.is_tensor(t))
    assert held32 / n == pytest.approx(4 * moments + scalars)


@pytest.mark.parametrize("eight, full, kwargs", PAIRS, ids=IDS)
def test_small_tensors_keep_float32_moments_and_step_as_float32(eight, full, kwargs):
    small8 = torch.nn.Parameter(torch.randn(100, generator=torch.Generator().manual_seed(0)))
    small32 = torch.nn.Parameter(small8.detach().clone())
    opt8, opt32 = eight([small8], lr=1e-2, **kwargs), full([small32], lr=1e-2, **kwargs)
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        small8.grad = small32.grad = torch.randn(100, generator=generator)
        opt8.step()
        opt32.step()
    assert all(opt8.state[small8][k].dtype == torch.float32 for k in eight.moments)
    assert torch.equal(small8, small32)


@pytest.mark.parametrize("name", ["adamw8bit", "stable_spam8bit", "ademamix8bit"])
def test_registry_names_train_a_bfloat16_model(name):
    model = _model(torch.bfloat16)
    optimizer = create(name, model.parameters(), lr=3e-3, min_8bit_size=1024)
    losses = _train(model, optimizer, 60)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert losses[-1] < 0.8 * losses[0]


def test_constructor_validation():
    for cls in (StableSPAM8bit, AdEMAMix8bit):
        with pytest.raises(ValueError, match="block_size"):
            cls([torch.nn.Parameter(torch.zeros(2))], block_size=0)
        assert cls([torch.nn.Parameter(torch.zeros(2))]).defaults["min_8bit_size"] == 4096


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("name", ["adamw8bit", "stable_spam8bit", "ademamix8bit"])
def test_cuda_run_tracks_the_cpu_run(name):
    """Device-agnostic: the same 30 steps on CUDA and on CPU stay within 1% of the total movement
    (CUDA's kernels round differently in the last bit, which can flip a code)."""
    start = _model()
    cpu, gpu = copy.deepcopy(start), copy.deepcopy(start).cuda()
    _train(cpu, create(name, cpu.parameters(), lr=1e-3, min_8bit_size=1024), 30)
    generator = torch.Generator().manual_seed(1)
    optimizer = create(name, gpu.parameters(), lr=1e-3, min_8bit_size=1024)
    for _ in range(30):
        x = torch.randn(32, 64, generator=generator).cuda()
        loss = (gpu(x) - x.flip(1)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert any(k.endswith("_codes") and v.is_cuda for k, v in optimizer.state[gpu[0].weight].items())
    moved = (_flat(cpu) - _flat(start)).norm()
    assert (_flat(gpu).cpu() - _flat(cpu)).norm() < 0.01 * moved
