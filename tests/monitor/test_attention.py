"""Attention logits read through hooks, against independent computations."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monitor_test_helpers import EncoderClassifier, RowSink
from stablelab.monitor import Monitor, register_attention
from stablelab.monitor import attention as attention_module


def _one_step(model, x, target_fn, sync_every=1):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sink = RowSink()
    monitor = Monitor(model, optimizer, sinks=[sink], sync_every=sync_every)
    loss = target_fn(model(x))
    loss.backward()
    monitor.observe(loss)
    optimizer.step()
    monitor.close()
    return monitor, sink.row_list[0]


def _max_abs_logit(q, k, causal):
    """max |q.k| / sqrt(d) by explicit loops over heads (B, H, T, D)."""
    d = q.shape[-1]
    z = torch.einsum("bhid,bhjd->bhij", q.double(), k.double()) / math.sqrt(d)
    if causal:
        t = z.shape[-1]
        z = z.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), 0.0)
    return z.abs().max().item()


def test_reference_model_matches_explicit_logits():
    from stablelab.models.transformer import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(d_model=32, d_head=8, n_layers=2, seq_len=16))
    tokens = torch.randint(0, 256, (2, 16))
    seen = []  # q and k of each layer, as the attention computes them
    handles = [m.register_forward_hook(lambda _m, _i, out: seen.append(out))
               for block in model.blocks for m in (block.attn.q_norm, block.attn.k_norm)]
    with torch.no_grad():
        model(tokens)
    for h in handles:
        h.remove()
    expected = [_max_abs_logit(seen[2 * i], seen[2 * i + 1], causal=True) for i in range(2)]
    monitor, row = _one_step(model, tokens, lambda logits: logits.float().logsumexp(-1).mean())
    assert [row["attn_logit_max_l0"], row["attn_logit_max_l1"]] == pytest.approx(expected, rel=1e-5)
    assert monitor.logits_module_name == "head"


def test_multihead_attention_in_transformer_encoder_layer():
    torch.manual_seed(0)
    model = EncoderClassifier(d=16, heads=2, layers=1)
    x = torch.randn(3, 5, 16)
    monitor, row = _one_step(model, x, lambda out: out.pow(2).mean())
    attn = model.encoder.layers[0].self_attn
    w_q, w_k = attn.in_proj_weight[:16], attn.in_proj_weight[16:32]
    b_q, b_k = attn.in_proj_bias[:16], attn.in_proj_bias[16:32]
    # norm_first=False: self-attention sees the layer input itself
    q = (x @ w_q.T + b_q).view(3, 5, 2, 8).transpose(1, 2)
    k = (x @ w_k.T + b_k).view(3, 5, 2, 8).transpose(1, 2)
    assert row["attn_logit_max_l0"] == pytest.approx(_max_abs_logit(q, k, causal=False), rel=1e-5)
    assert monitor.logits_module_name == "head"   # the last Linear, not the attention's out_proj


def test_hugging_face_gpt2_from_config():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    tokens = torch.randint(0, 64, (2, 12))
    monitor, row = _one_step(model, tokens, lambda out: out.logits.float().logsumexp(-1).mean())
    assert len(monitor.attention_layers) == 2 and monitor.logits_module_name == "lm_head"
    with torch.no_grad():
        hidden = model(tokens, output_hidden_states=True).hidden_states
        for i, block in enumerate(model.transformer.h):
            qkv = block.attn.c_attn(block.ln_1(hidden[i]))
            q, k = qkv[..., :32], qkv[..., 32:64]
            q = q.view(2, 12, 4, 8).transpose(1, 2)
            k = k.view(2, 12, 4, 8).transpose(1, 2)
            assert row[f"attn_logit_max_l{i}"] == pytest.approx(_max_abs_logit(q, k, causal=True), rel=1e-4)
    assert math.isfinite(row["log_z_mean"])
    expected_log_z = model(tokens).logits.float().logsumexp(-1)
    assert row["log_z_mean"] == pytest.approx(expected_log_z.mean().item(), rel=1e-5)


class MyAttention(nn.Module):
    """A user's own attention: q and k from separate Linear layers, 2 heads, not causal."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, 3)

    def forward(self, x):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        y = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x)))
        return self.out(y.transpose(1, 2).reshape(b, t, d))


def test_registered_user_attention(monkeypatch):
    monkeypatch.setattr(attention_module, "_ADAPTERS", [])
    register_attention(MyAttention, q="to_q", k="to_k", n_heads="heads", causal=False)
    model = MyAttention()
    x = torch.randn(2, 4, 8)
    monitor, row = _one_step(model, x, lambda out: out.pow(2).mean(), )
    q = model.to_q(x).view(2, 4, 2, 4).transpose(1, 2)
    k = model.to_k(x).view(2, 4, 2, 4).transpose(1, 2)
    assert row["attn_logit_max_l0"] == pytest.approx(_max_abs_logit(q, k, causal=False), rel=1e-5)
    assert monitor.logits_module_name == "out"


def test_attention_is_read_only_on_sampled_steps():
    model = EncoderClassifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sink = RowSink()
    monitor = Monitor(model, optimizer, sinks=[sink], sync_every=4)
    for _ in range(9):
        loss = model(torch.randn(2, 3, 16)).pow(2).mean()
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
    monitor.close()
    assert [r["step"] for r in sink.row_list if "attn_logit_max" in r] == [0, 4, 8]


def test_llama_style_attention_with_grouped_query_heads():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                      attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    tokens = torch.randint(0, 64, (2, 10))
    monitor, row = _one_step(model, tokens, lambda out: out.logits.float().logsumexp(-1).mean())
    assert len(monitor.attention_layers) == 2 and monitor.logits_module_name == "lm_head"
    with torch.no_grad():
        hidden = model(tokens, output_hidden_states=True).hidden_states
        for i, layer in enumerate(model.model.layers):
            h = layer.input_layernorm(hidden[i])
            q = layer.self_attn.q_proj(h).view(2, 10, 4, 8).transpose(1, 2)
            k = layer.self_attn.k_proj(h).view(2, 10, 2, 8).transpose(1, 2)
            k = k[:, [0, 0, 1, 1]]              # query heads 0,1 share kv head 0; 2,3 share 1
            # documented estimate: q and k before the rotary embedding
            assert row[f"attn_logit_max_l{i}"] == pytest.approx(_max_abs_logit(q, k, causal=True), rel=1e-4)


class DeclaredAttention(MyAttention):
    """A user's attention that opts in by what it exposes: `monitor_qk` names per-head q and k."""

    monitor_qk = ("q_heads", "k_heads")
    is_causal = False

    def __init__(self, d=8, heads=2):
        super().__init__(d, heads)
        self.q_heads, self.k_heads = nn.Identity(), nn.Identity()

    def forward(self, x):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k = self.q_heads(split(self.to_q(x))), self.k_heads(split(self.to_k(x)))
        y = F.scaled_dot_product_attention(q, k, split(self.to_v(x)))
        return self.out(y.transpose(1, 2).reshape(b, t, d))


def test_attention_declared_by_monitor_qk_without_registration(monkeypatch):
    monkeypatch.setattr(attention_module, "_ADAPTERS", [])
    torch.manual_seed(0)
    model = DeclaredAttention()
    x = torch.randn(2, 4, 8)
    monitor, row = _one_step(model, x, lambda out: out.pow(2).mean())
    assert [layer.name for layer in monitor.attention_layers] == [""]
    q = model.to_q(x).view(2, 4, 2, 4).transpose(1, 2)
    k = model.to_k(x).view(2, 4, 2, 4).transpose(1, 2)
    assert row["attn_logit_max_l0"] == pytest.approx(_max_abs_logit(q, k, causal=False), rel=1e-5)


class OwnHooksAttention(MyAttention):
    """Full control: the module installs its own hooks and reports a value it computes."""

    def monitor_attention_hooks(self, record):
        def hook(_module, _inputs, output):
            if getattr(record, "active", True):
                record(torch.tensor(7.0))
        return [self.to_k.register_forward_hook(hook)]


def test_attention_with_its_own_hooks_is_armed_and_disarmed(monkeypatch):
    monkeypatch.setattr(attention_module, "_ADAPTERS", [])
    model = OwnHooksAttention()
    monitor, row = _one_step(model, torch.randn(2, 4, 8), lambda out: out.pow(2).mean())
    assert row["attn_logit_max_l0"] == 7.0
    assert not model.to_k._forward_hooks  # closed monitor: the module's hooks are gone


def test_reference_attention_is_found_by_protocol_not_by_class():
    from stablelab.models.transformer import Attention, TransformerConfig

    layers = attention_module.find_attention(Attention(TransformerConfig(d_model=16, d_head=8)))
    assert [(layer.name, layer.attach) for layer in layers] == [("", attention_module._declared_qk)]


@pytest.mark.parametrize("signal_rows", [256, 0, 40])
def test_signal_rows_reads_the_first_sequences_and_a_strided_sample_of_the_logits(signal_rows):
    from stablelab.models.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(d_model=32, d_head=8, n_layers=1, seq_len=16))
    tokens = torch.randint(0, 256, (24, 16))  # 384 query positions, more than 256
    seen = []
    handles = [m.register_forward_hook(lambda _m, _i, out: seen.append(out))
               for m in (model.blocks[0].attn.q_norm, model.blocks[0].attn.k_norm, model.head)]
    with torch.no_grad():
        model(tokens)
    for h in handles:
        h.remove()
    q, k, logits = seen
    keep = 24 if signal_rows == 0 else -(-signal_rows // 16)   # 16 sequences, or 3 for 40 rows
    rows = logits.reshape(-1, 256)
    if signal_rows:
        rows = rows[:: -(-len(rows) // signal_rows)]              # every 2nd row, or every 10th
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sink = RowSink()
    monitor = Monitor(model, optimizer, sinks=[sink], sync_every=1, signal_rows=signal_rows)
    loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
    loss.backward()
    monitor.observe(loss)
    optimizer.step()
    monitor.close()
    row = sink.row_list[0]
    assert row["attn_logit_max_l0"] == pytest.approx(_max_abs_logit(q[:keep], k[:keep], causal=True), rel=1e-5)
    assert row["log_z_mean"] == pytest.approx(rows.double().logsumexp(-1).mean().item(), rel=1e-5)
    if signal_rows == 40:  # the sample is not the whole batch: a different (sampled) reading
        assert keep < 24 and len(rows) < 384


def test_signal_rows_must_be_a_non_negative_integer():
    from stablelab.errors import UsageError

    model = nn.Linear(4, 2)
    with pytest.raises(UsageError, match="signal_rows"):
        Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), sinks=(), signal_rows=-1)
