"""Fake quantisation: the symmetric per-group absmax grid by hand, its half-step error bound, the
straight-through backward, and quantize_model / dequantize_model round trips on stablelab's
reference transformer and on Hugging Face GPT-2 and Llama built from tiny configs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stablelab.errors import UsageError
from stablelab.models.transformer import Transformer, TransformerConfig
from stablelab.nn import (
    FakeQuantConv1D, FakeQuantLinear, dequantize_model, fake_quantize, quantization_step, quantize_model,
)


def test_int2_grid_by_hand():
    # 2 bits: levels -2..1, scale = absmax / 1.5 = 1; 1.5 -> round 2 -> clamped to 1 (half a step)
    x = torch.tensor([[1.5, -0.75, 0.2, 0.0]])
    assert torch.equal(fake_quantize(x, 2), torch.tensor([[1.0, -1.0, 0.0, 0.0]]))


def test_int4_grid_by_hand_per_group():
    # 4 bits: levels -8..7, scale = absmax / 7.5 per group of 2
    x = torch.tensor([[7.5, -3.0, 0.3, -0.15]])
    # group 1: scale 1 -> [7 (8 clamped), -3]; group 2: scale 0.04 -> 0.3/0.04 = 7.5 -> 7, -3.75 -> -4
    expected = torch.tensor([[7.0, -3.0, 7 * 0.04, -4 * 0.04]])
    assert torch.allclose(fake_quantize(x, 4, group_size=2), expected)
    assert torch.allclose(quantization_step(x, 4, 2), torch.tensor([[1.0, 1.0, 0.04, 0.04]]))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [None, 8, 32])
def test_error_is_at_most_half_a_step_and_levels_are_the_grid(bits, group_size):
    torch.manual_seed(bits)
    x = torch.randn(16, 64) * torch.logspace(-3, 2, 64)  # groups of very different ranges
    x_hat = fake_quantize(x, bits, group_size)
    step = quantization_step(x, bits, group_size)
    # half a step, plus float32 rounding of x_hat = q * s itself (an ulp of x, visible at 8 bits)
    ulp = torch.finfo(torch.float32).eps * x.abs()
    assert torch.all((x_hat - x).abs() <= step / 2 + ulp)
    q = x_hat / step
    assert torch.allclose(q, q.round(), atol=1e-4)
    assert q.round().min() >= -(2 ** (bits - 1)) and q.round().max() <= 2 ** (bits - 1) - 1


def test_zero_group_stays_zero_and_dtype_is_kept():
    x = torch.zeros(2, 8)
    x[1] = torch.linspace(-1, 1, 8)
    out = fake_quantize(x, 4, 4)
    assert torch.equal(out[0], torch.zeros(8))
    y = fake_quantize(x.to(torch.bfloat16), 8)
    assert y.dtype == torch.bfloat16


def test_backward_is_straight_through():
    x = torch.randn(4, 8, requires_grad=True)
    upstream = torch.randn(4, 8)
    fake_quantize(x, 4, 4).backward(upstream)
    assert torch.equal(x.grad, upstream)


@pytest.mark.parametrize("kwargs", [dict(bits=1), dict(bits=9), dict(bits=4.0), dict(bits=True),
                                    dict(bits=4, group_size=3), dict(bits=4, group_size=0)])
def test_bad_bits_or_group_is_a_usage_error(kwargs):
    with pytest.raises(UsageError):
        fake_quantize(torch.ones(2, 8), **kwargs)


def _reference_model():
    torch.manual_seed(0)
    return Transformer(TransformerConfig(d_model=64, n_layers=2, d_head=16, seq_len=16))


def _train_step(model, tokens, logits_of=lambda out: out):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    logits = logits_of(model(tokens))
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def test_round_trip_on_the_reference_transformer():
    model = _reference_model()
    tokens = torch.randint(0, 256, (4, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    with torch.no_grad():
        float_out = model(tokens)

    assert quantize_model(model, weight_bits=4, activation_bits=8, group_size=32) is model
    fq = [m for m in model.modules() if isinstance(m, FakeQuantLinear)]
    assert len(fq) == 2 * 4 + 1  # qkv, proj, up, down per block, and the head
    assert list(model.parameters()) == params and model.state_dict().keys() == before.keys()
    with torch.no_grad():
        quant_out = model(tokens)
    assert not torch.equal(quant_out, float_out)
    assert (quant_out - float_out).abs().mean() < 0.2 * float_out.abs().mean()

    # a model that was only quantised and dequantised is the same model, bit for bit
    dequantize_model(model)
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(tokens), float_out)

    # a training step with fake quantisation updates the float32 masters, which stay in place
    quantize_model(model, 4, 8, 32)
    loss = _train_step(model, tokens)
    assert torch.isfinite(loss)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(v.dtype == torch.float32 for v in trained.values())
    assert not all(torch.equal(before[k], v) for k, v in trained.items())
    dequantize_model(model)
    assert list(model.parameters()) == params
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())


def test_weight_only_exclude_and_per_row_groups():
    model = _reference_model()
    quantize_model(model, weight_bits=8, activation_bits=None, group_size=None, exclude=["head"])
    assert type(model.head) is nn.Linear
    up = model.blocks[0].mlp.up
    assert isinstance(up, FakeQuantLinear) and up.activation_bits is None and up.group_size is None
    x = torch.randn(3, 64)
    expected = F.linear(x, fake_quantize(up.weight, 8, None))
    assert torch.allclose(up(x), expected)


def test_bad_input_changes_nothing():
    model = _reference_model()
    # d_model 64 divides by 32, but the MLP's down projection has 256 inputs: 48 divides neither
    with pytest.raises(UsageError, match="does not divide"):
        quantize_model(model, 4, 8, group_size=48)
    with pytest.raises(UsageError):
        quantize_model(model, weight_bits=1)
    with pytest.raises(UsageError):
        quantize_model(model, 4, activation_bits=16)
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())
    quantize_model(model, 4, 8, 32)
    with pytest.raises(UsageError, match="already"):
        quantize_model(model, 4, 8, 32)


def test_a_bare_linear_layer():
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    fq = quantize_model(layer, 4, 8, 4)
    assert isinstance(fq, FakeQuantLinear) and fq.weight is layer.weight and fq.bias is layer.bias
    x = torch.randn(2, 8)
    assert torch.allclose(fq(x), F.linear(fake_quantize(x, 8, 4), fake_quantize(layer.weight, 4, 4),
                                          layer.bias))
    assert dequantize_model(fq) is layer


def test_round_trip_on_hugging_face_gpt2_from_a_config():
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=128, n_positions=16, n_embd=64, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)
    tokens = torch.randint(0, 128, (2, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        float_out = model(tokens).logits

    quantize_model(model, 4, 8, 32)
    conv = [m for m in model.modules() if isinstance(m, FakeQuantConv1D)]
    assert len(conv) == 2 * 4  # c_attn, c_proj, c_fc, mlp c_proj per block
    assert isinstance(model.lm_head, FakeQuantLinear)
    assert model.lm_head.weight is model.transformer.wte.weight  # tying survives
    # Conv1D computes x W + b with W (in, out): the fake-quantised layer does the same on fq(W)
    c_fc = model.transformer.h[0].mlp.c_fc
    x = torch.randn(3, 64)
    assert torch.allclose(c_fc(x), fake_quantize(x, 8, 32) @ fake_quantize(c_fc.weight.t(), 4, 32).t()
                          + c_fc.bias, atol=1e-5)
    loss = _train_step(model, tokens, logits_of=lambda out: out.logits)
    assert torch.isfinite(loss)
    trained = {k: v.clone() for k, v in model.state_dict().items()}

    dequantize_model(model)
    assert sum(type(m) is Conv1D for m in model.modules()) == 8
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.transformer.wte.weight
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())
    assert not all(torch.equal(before[k], v) for k, v in trained.items())


def test_round_trip_on_hugging_face_llama_from_a_config():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=32)
    model = transformers.LlamaForCausalLM(config)
    tokens = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        float_out = model(tokens).logits
    quantize_model(model, 4, 8, 32)
    assert sum(isinstance(m, FakeQuantLinear) for m in model.modules()) == 2 * 7 + 1
    loss = _train_step(model, tokens, logits_of=lambda out: out.logits)
    assert torch.isfinite(loss)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    dequantize_model(model)
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())
    assert torch.isfinite(float_out).all()


def test_copies_dtype_changes_and_checkpoints_of_a_quantised_model():
    import copy

    model = _reference_model()
    quantize_model(model, 4, 8, 32)
    # a deep copy is quantised on its own Parameters and dequantises to them
    twin = dequantize_model(copy.deepcopy(model))
    assert type(twin.head) is nn.Linear and twin.head.weight is not model.head.weight
    assert torch.equal(twin.head.weight, model.head.weight)
    # state_dict keys are those of the plain model: checkpoints load either way
    plain = _reference_model()
    plain.load_state_dict(model.state_dict())
    # .to() converts the masters; dequantize_model restores the converted ones
    model.to(torch.float64)
    dequantize_model(model)
    assert model.head.weight.dtype == torch.float64 and type(model.head) is nn.Linear
