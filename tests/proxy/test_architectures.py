"""Hugging Face architectures in the proxy study: built from their transformers configs, mitigations
as each spells them, and the attention logits the monitor reports checked against a hand computation
from q and k after qk-norm and RoPE."""

import json
import math

import pytest
import torch

from stablelab.cli import main
from stablelab.models.architectures import build_model, count_model_parameters
from stablelab.monitor.attention import find_attention

TOKENS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))


def _monitor_logits(model, tokens=TOKENS):
    """What the monitor's attention discovery reports, one value per layer."""
    values = []
    layers = find_attention(model)
    for layer in layers:
        layer.arm(lambda z, out=values: out.append(float(z)))
    model(tokens)
    for layer in layers:
        layer.disarm()
    return [l.name for l in layers], values


def _capture(modules):
    seen = {}
    handles = [m.register_forward_hook(lambda mod, i, o, name=name: seen.__setitem__(name, o.detach()))
               for name, m in modules.items()]
    return seen, handles


def _rope(x, theta=10000.0):
    """LLaMA's rotary embedding by hand (rotate-half form): x (B, H, T, D)."""
    d, t = x.shape[-1], x.shape[-2]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = torch.outer(torch.arange(t, dtype=torch.float32), inv)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _max_logit(q, k):
    z = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    t = z.shape[-1]
    return z.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), 0).abs().max().item()


def _heads(x, d=32):
    b, t, hd = x.shape
    return x.view(b, t, hd // d, d).transpose(1, 2)


def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@pytest.mark.parametrize("arch, variant", [("llama", "baseline"), ("qwen3", "qk_norm"), ("llama", "qk_norm")])
def test_monitor_reads_logits_after_qk_norm_and_rope(arch, variant):
    torch.manual_seed(0)
    model = build_model(arch, 64, 2, variant, 16, 32)
    with torch.no_grad():  # make the logits large enough that a wrong formula shows
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(8)
    attn = model.lm.model.layers[0].self_attn
    seen, handles = _capture({"q": attn.q_proj, "k": attn.k_proj})
    names, reported = _monitor_logits(model)
    for h in handles:
        h.remove()
    assert names == ["lm.model.layers.0.self_attn", "lm.model.layers.1.self_attn"]
    q, k = _heads(seen["q"]), _heads(seen["k"])  # llama+qk_norm: q_proj's output is already normed (hook)
    if arch == "qwen3":
        eps = model.lm.config.rms_norm_eps
        q, k = _rms(q, attn.q_norm.weight, eps), _rms(k, attn.k_norm.weight, eps)
    expected = _max_logit(_rope(q), _rope(k))
    assert reported[0] == pytest.approx(expected, rel=1e-4)
    # RoPE matters: the logit from q and k before it differs (so the check above tells them apart)
    assert abs(_max_logit(q, k) - expected) > 1e-3 * expected


def test_llama_qk_norm_is_qwen3_placement():
    """LLaMA + the added per-head RMSNorm computes what Qwen3 (native qk-norm) computes."""
    torch.manual_seed(0)
    llama = build_model("llama", 64, 2, "qk_norm", 16, 32)
    torch.manual_seed(0)
    qwen3 = build_model("qwen3", 64, 2, "qk_norm", 16, 32)
    assert torch.allclose(llama(TOKENS), qwen3(TOKENS), atol=1e-5)
    assert _monitor_logits(llama)[1] == pytest.approx(_monitor_logits(qwen3)[1], rel=1e-5)


@pytest.mark.parametrize("arch", ["qwen3", "olmo2"])
def test_native_qk_norm_is_switched_off_for_baseline(arch):
    base, normed = build_model(arch, 64, 2, "baseline", 16, 32), build_model(arch, 64, 2, "qk_norm", 16, 32)
    attn = base.lm.model.layers[0].self_attn
    assert isinstance(attn.q_norm, torch.nn.Identity) and isinstance(attn.k_norm, torch.nn.Identity)
    assert not isinstance(normed.lm.model.layers[0].self_attn.q_norm, torch.nn.Identity)


def test_gpt2_qk_norm_logits_are_from_normed_heads():
    torch.manual_seed(0)
    model = build_model("gpt2", 64, 2, "qk_norm", 16, 32)
    attn = model.lm.transformer.h[0].attn
    seen, handles = _capture({"qkv": attn.c_attn})  # the hook's output: q and k already normed
    _, reported = _monitor_logits(model)
    handles[0].remove()
    q, k, _ = seen["qkv"].split(64, dim=-1)
    q, k = _heads(q), _heads(k)
    assert q.pow(2).mean(-1).sqrt().mean().item() == pytest.approx(1.0, rel=1e-2)  # LayerNorm'd heads
    assert reported[0] == pytest.approx(_max_logit(q, k), rel=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen3", "olmo2"])
def test_sizes_and_untied_byte_models(arch):
    model = build_model(arch, 64, 3, "baseline", 16, 32)
    assert model(TOKENS).shape == (2, 16, 256)
    n = sum(p.numel() for p in model.parameters())
    assert n == count_model_parameters(arch, 64, 3, "baseline", 16, 32)
    assert len(find_attention(model)) == 3
    assert model.lm.get_output_embeddings().weight.data_ptr() != model.lm.get_input_embeddings().weight.data_ptr()


TINY = ["--widths", "32", "--lrs", "1e-3,1e-1", "--variants", "baseline,qk_norm", "--steps", "12",
        "--batch-size", "4", "--seq-len", "16", "--log-every", "4", "--prediction-step", "4",
        "--predict-width", "64", "--workers", "2", "--no-progress"]


@pytest.mark.parametrize("arch", ["qwen3", "gpt2"])
def test_cli_study_of_hf_model_records_attention_logits(arch, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / arch
    assert main(["proxy", "--model", arch, *TINY, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {r["run_id"] for r in summary["runs"]} == {
        f"{arch}_{v}_w32_d2_lr{lr}_s0" for v in ("baseline", "qk_norm") for lr in ("0.001", "0.1")}
    rows = pq.read_table(out / "runs" / f"{arch}_baseline_w32_d2_lr0.1_s0" / "metrics.parquet").to_pylist()
    assert all(r["attn_logit_max_l0"] > 0 and r["attn_logit_max_l1"] > 0 for r in rows[:3])
    assert all(r["log_z_mean"] is not None for r in rows[:3])


@pytest.mark.parametrize("args, message", [
    (["--model", "mamba"], "unknown model 'mamba'"),
    (["--model", "llama", "--variants", "peri_ln"], "no peri-norm placement"),
    (["--model", "llama", "--widths", "48"], "width 48 must be a positive multiple of the head size 32"),
    (["--precision", "fp8"], "--precision"),
    (["--warmup", "1.5"], "--warmup"),
    (["--device", "cuda:7"], "--device"),
])
def test_bad_model_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "o"
    assert main(["proxy", *TINY, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("x")
    assert main(["proxy", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file" in err and "\n" not in err


def test_python_api_trains_a_user_model(tmp_path):
    from stablelab.models.transformer import Transformer, TransformerConfig
    from stablelab.proxy import study

    def model_fn(width, depth, variant):
        return Transformer(TransformerConfig(seq_len=16, d_model=width, n_layers=depth, qk_norm="qk_norm" in variant))

    summary = study(model_fn=model_fn, out=tmp_path / "api", widths=(32,), lrs=(1e-3, 1e-1),
                    variants=("baseline", "qk_norm"), steps=12, batch_size=4, seq_len=16, log_every=4,
                    prediction_step=4, predict_width=64, workers=2)
    assert len(summary["runs"]) == 4 and all(r["run_id"].startswith("custom_") for r in summary["runs"])
    assert all(r["max_attn_logit"] > 0 for r in summary["runs"])
    assert set(summary["lr_sensitivity"]) == {"baseline", "qk_norm"}


def test_precision_quantises_before_the_qk_norm_hooks():
    torch.manual_seed(0)
    full = build_model("llama", 64, 2, "qk_norm", 16, 32)
    torch.manual_seed(0)
    low = build_model("llama", 64, 2, "qk_norm", 16, 32, precision="int8")
    attn = low.lm.model.layers[0].self_attn
    assert type(attn.q_proj).__name__ == "FakeQuantLinear" and type(low.lm.lm_head) is torch.nn.Linear
    # the per-head norm hook sits on the layer the model calls: q is normed in the int8 model too
    _, z_full = _monitor_logits(full)
    _, z_low = _monitor_logits(low)
    assert z_low == pytest.approx(z_full, rel=0.05)
    assert torch.allclose(low(TOKENS), full(TOKENS), atol=0.05)
