import math

import pytest
import torch

from stablelab.models import Transformer, TransformerConfig
from stablelab.run.schedule import parameter_groups, warmup_cosine
from stablelab.signals import attention_logit_max, output_log_z, z_loss


def test_attention_logit_max_by_hand():
    q = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (1 head, T=2, d=2)
    k = torch.tensor([[[3.0, 0.0], [0.0, -4.0]]])
    # z = q k^T / sqrt(2) = [[3, 0], [0, -8]] / sqrt(2); causal: z[0,1] hidden
    assert attention_logit_max(q, k).item() == pytest.approx(8 / math.sqrt(2))
    k_future = torch.tensor([[[3.0, 0.0], [100.0, 0.0]]])  # large value only visible to no one before it
    assert attention_logit_max(q, k_future).item() == pytest.approx(3 / math.sqrt(2))
    assert attention_logit_max(q, k_future, causal=False).item() == pytest.approx(100 / math.sqrt(2))


def _max_logit_layer0(model, tokens):
    """q and k as the model's Attention sees them, read with forward hooks on q_norm / k_norm."""
    seen = {}
    attn = model.blocks[0].attn
    handles = [attn.q_norm.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o)),
               attn.k_norm.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o))]
    with torch.no_grad():
        model(tokens)
    for h in handles:
        h.remove()
    return attention_logit_max(seen["q"], seen["k"]).item()


def test_qk_norm_bounds_attention_logits():
    # LayerNorm with unit gain gives ||q|| = ||k|| = sqrt(d_head), so |z| <= sqrt(d_head) (Cauchy-Schwarz)
    tokens = torch.randint(0, 256, (2, 16))
    model = Transformer(TransformerConfig(d_model=64, n_layers=1, d_head=16, seq_len=16, qk_norm=True))
    baseline = Transformer(TransformerConfig(d_model=64, n_layers=1, d_head=16, seq_len=16))
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.mul_(50.0)  # huge q, k before the norm
        baseline.blocks[0].attn.qkv.weight.mul_(50.0)
    assert _max_logit_layer0(model, tokens) <= math.sqrt(16) + 1e-4
    assert _max_logit_layer0(baseline, tokens) > 100 * math.sqrt(16)


@pytest.mark.parametrize("placement", ["pre", "peri"])
def test_model_is_causal(placement):
    model = Transformer(TransformerConfig(d_model=32, n_layers=2, d_head=16, seq_len=12, norm_placement=placement))
    tokens = torch.randint(0, 256, (1, 12))
    changed = tokens.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 256
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.allclose(a[0, :8], b[0, :8], atol=1e-5)
    assert not torch.allclose(a[0, 8:], b[0, 8:])


def test_peri_ln_adds_output_norms():
    pre = Transformer(TransformerConfig(d_model=32, n_layers=1, d_head=16))
    peri = Transformer(TransformerConfig(d_model=32, n_layers=1, d_head=16, norm_placement="peri"))
    # two extra LayerNorm gains of size d per block
    assert sum(p.numel() for p in peri.parameters()) - sum(p.numel() for p in pre.parameters()) == 2 * 32


def test_z_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # log Z = [log 2, log 4]; z-loss = c * mean(log^2) = c * (log(2)^2 + log(4)^2) / 2
    assert output_log_z(logits).tolist() == pytest.approx([math.log(2), math.log(4)])
    expected = 1e-4 * (math.log(2) ** 2 + math.log(4) ** 2) / 2
    assert z_loss(logits, 1e-4).item() == pytest.approx(expected, rel=1e-6)


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert warmup_cosine(9, 1.0, 10, 110) == pytest.approx(1.0)
    # halfway through the cosine: (peak + min) / 2
    assert warmup_cosine(60, 1.0, 10, 110, min_lr=0.0) == pytest.approx(0.5)
    assert warmup_cosine(110, 1.0, 10, 110, min_lr=1e-5) == pytest.approx(1e-5)


def test_independent_weight_decay_and_mup():
    model = Transformer(TransformerConfig(d_model=128, n_layers=1, d_head=32))
    groups = parameter_groups(model, peak_lr=0.01, independent_weight_decay=1e-4, mup_simple=True, base_width=64)
    for g in groups:
        if g["weight_decay"]:
            # AdamW decays by lr * wd per step: at the peak, lr_scale * 0.01 * wd == 1e-4 (independent)
            assert 0.01 * g["lr_scale"] * g["weight_decay"] == pytest.approx(1e-4)
    hidden = next(g for g in groups if any(p is model.blocks[0].mlp.down.weight for p in g["params"]))
    assert hidden["lr_scale"] == pytest.approx(64 / 512)  # base_fan_in / fan_in
    emb = next(g for g in groups if any(p is model.token_embedding.weight for p in g["params"]))
    assert emb["lr_scale"] == 1.0
