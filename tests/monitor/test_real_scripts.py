"""Issue 27: the monitor on what real training scripts do: a nanoGPT-layout model (fused qkv,
F.scaled_dot_product_attention), torch.compile, a blow-up in the first steps, and a detached loss."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monitor_gpt_like import TinyGPT, token_batches, train_steps
from monitor_test_helpers import RowSink
from stablelab.monitor import Monitor, register_attention
from stablelab.monitor import attention as attention_module


def _max_abs_logit(q, k, causal=True):
    """max |q.k| / sqrt(d) over heads (B, H, T, D), k heads repeated for grouped queries."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    z = torch.einsum("bhid,bhjd->bhij", q.double(), k.double()) / math.sqrt(q.shape[-1])
    if causal:
        t = z.shape[-1]
        z = z.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), 0.0)
    return z.abs().max().item()


def _train_lm(model, steps, lr=1e-3, sync_every=5, monitored=None, **monitor_kwargs):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    sink = RowSink()
    monitor = Monitor(monitored or model, optimizer, sinks=[sink], sync_every=sync_every, **monitor_kwargs)
    losses = train_steps(model, optimizer, monitor, token_batches(batch=16), steps)
    monitor.close()
    return monitor, sink.row_list, losses


# -- attention by layout -----------------------------------------------------------------------
def test_nanogpt_layout_attention_is_recognised_and_read_exactly():
    torch.manual_seed(0)
    model = TinyGPT()
    monitor, rows, _ = _train_lm(model, 1, lr=0.0)
    assert [layer.name for layer in monitor.attention_layers] == ["h.0.attn", "h.1.attn"]
    x, _ = next(token_batches(batch=16))
    with torch.no_grad():
        h = model.wte(x) + model.wpe(torch.arange(x.shape[1]))
        for i, block in enumerate(model.h):
            q, k, _v = block.attn.c_attn(block.ln_1(h)).split(32, dim=2)
            q, k = (z.view(16, 16, 4, 8).transpose(1, 2) for z in (q, k))
            expected = _max_abs_logit(q[:, :, :], k)
            assert rows[0][f"attn_logit_max_l{i}"] == pytest.approx(expected, rel=1e-4)
            h = block(h)


def _spy_sdpa(monkeypatch):
    """The q and k each attention layer passes to F.scaled_dot_product_attention: what the model
    itself computes, the independent expectation for the monitor's split of a fused projection."""
    seen = []
    original = F.scaled_dot_product_attention

    def spy(q, k, *args, **kwargs):
        seen.append((q.detach(), k.detach()))
        return original(q, k, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


HF_FUSED = {  # no rotary embedding, so the q and k given to attention are the projection's
    "gpt_neox (per head)": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(intermediate_size=64, rotary_pct=0.0)),
    "falcon (per head)": ("FalconConfig", "FalconForCausalLM", dict(alibi=True, multi_query=False)),
    "falcon-7b (multi-query)": ("FalconConfig", "FalconForCausalLM", dict(alibi=True, multi_query=True)),
    "falcon-40b (grouped)": ("FalconConfig", "FalconForCausalLM",
                             dict(alibi=True, new_decoder_architecture=True, num_kv_heads=2, multi_query=False)),
}


@pytest.mark.parametrize("case", sorted(HF_FUSED))
def test_hugging_face_fused_qkv_layouts_read_the_q_and_k_the_model_uses(case, monkeypatch):
    transformers = pytest.importorskip("transformers")
    config_name, model_name, extra = HF_FUSED[case]
    config = getattr(transformers, config_name)(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=4, attn_implementation="sdpa", **extra)
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config)
    seen = _spy_sdpa(monkeypatch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sink = RowSink()
    monitor = Monitor(model, optimizer, sinks=[sink])
    loss = model(torch.randint(0, 64, (2, 10)), labels=torch.randint(0, 64, (2, 10))).loss
    loss.backward()
    monitor.observe(loss)
    monitor.close()
    assert len(monitor.attention_layers) == 2 and len(seen) == 2
    for i, (q, k) in enumerate(seen):
        assert sink.row_list[0][f"attn_logit_max_l{i}"] == pytest.approx(_max_abs_logit(q, k), rel=1e-4)


def test_mistral_grouped_query_attention_is_found_by_its_projections():
    transformers = pytest.importorskip("transformers")
    config = transformers.MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(config)
    tokens = torch.randint(0, 64, (2, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sink = RowSink()
    monitor = Monitor(model, optimizer, sinks=[sink])
    loss = model(tokens, labels=tokens).loss
    loss.backward()
    monitor.observe(loss)
    monitor.close()
    assert [layer.name for layer in monitor.attention_layers] == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    with torch.no_grad():
        hidden = model(tokens, output_hidden_states=True).hidden_states
        for i, layer in enumerate(model.model.layers):
            h = layer.input_layernorm(hidden[i])
            q = layer.self_attn.q_proj(h).view(2, 10, 4, 8).transpose(1, 2)
            k = layer.self_attn.k_proj(h).view(2, 10, 2, 8).transpose(1, 2)
            # documented estimate: q and k before the rotary embedding
            assert sink.row_list[0][f"attn_logit_max_l{i}"] == pytest.approx(_max_abs_logit(q, k), rel=1e-4)


class OddAttention(nn.Module):
    """Attention the built-ins cannot read: a fused projection and a head count under names no
    layout uses."""

    def __init__(self, d=16, groups=2):
        super().__init__()
        self.groups, self.mix = groups, nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.groups, d // self.groups).transpose(1, 2) for z in self.mix(x).split(d, -1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


def test_unrecognised_attention_is_said_once_and_register_attention_describes_a_fused_qkv(monkeypatch):
    monkeypatch.setattr(attention_module, "_ADAPTERS", [])
    model = nn.Sequential(OddAttention(), OddAttention())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.warns(UserWarning, match=r"2 attention-like module\(s\) not recognised \(0, .*register_attention"):
        monitor = Monitor(model, optimizer, sinks=())
    assert monitor.attention_layers == []
    monitor.close()

    register_attention(OddAttention, qkv="mix", n_heads="groups")
    sink = RowSink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recognised now: nothing to say
        monitor = Monitor(model, optimizer, sinks=[sink])
    x = torch.randn(2, 6, 16)
    loss = model(x).pow(2).mean()
    loss.backward()
    monitor.observe(loss)
    monitor.close()
    q, k, _ = model[0].mix(x).split(16, -1)
    q, k = (z.view(2, 6, 2, 8).transpose(1, 2) for z in (q, k))
    assert sink.row_list[0]["attn_logit_max_l0"] == pytest.approx(_max_abs_logit(q, k), rel=1e-5)


# -- torch.compile -------------------------------------------------------------------------------
def test_a_compiled_lm_records_log_z_and_attention_on_every_sampled_step_without_recompiles():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    eager_model = TinyGPT()
    compiled_model = TinyGPT()
    compiled_model.load_state_dict(eager_model.state_dict())
    _, eager_rows, eager_losses = _train_lm(eager_model, 21)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(compiled_model)
    monitor, rows, losses = _train_lm(compiled, 21)
    sampled = [r["step"] for r in rows if "log_z_mean" in r and "attn_logit_max" in r]
    assert sampled == [0, 5, 10, 15, 20]
    assert not any("log_z_mean" in r for r in rows if r["step"] % 5)
    # one graph with the sampled step's hooks, one without; none after
    assert counters["frames"]["total"] <= 2, dict(counters["frames"])
    assert losses == pytest.approx(eager_losses, rel=1e-3)
    for row, eager in zip(rows[::5], eager_rows[::5]):
        assert row["log_z_mean"] == pytest.approx(eager["log_z_mean"], rel=1e-3)
        assert row["attn_logit_max"] == pytest.approx(eager["attn_logit_max"], rel=1e-3)
    assert monitor.measurer.task == "classification"  # the compiled loss's graph hides the loss; the tied head says


def test_a_model_compiled_and_run_before_the_monitor_is_said_once():
    torch.manual_seed(0)
    model = torch.compile(TinyGPT())
    x, y = next(token_batches(batch=4))
    model(x, y)[1].backward()  # traced without the monitor's hooks
    model.zero_grad()
    with pytest.warns(UserWarning, match="create the Monitor before the first forward") as said:
        _train_lm(model, 11)
    assert sum("create the Monitor before" in str(w.message) for w in said) == 1


# -- early blow-ups ------------------------------------------------------------------------------
def test_a_blow_up_in_the_first_steps_is_warned_on_the_step_it_happens():
    torch.manual_seed(0)
    monitor, _, losses = _train_lm(TinyGPT(d=64), 30, lr=1.0)
    blow_up = next(t for t, loss in enumerate(losses) if loss >= 2 * losses[0])
    assert blow_up <= 3
    spikes = [e.step for e in monitor.events if e.kind == "loss_spike" and e.severity == "warning"]
    assert spikes and spikes[0] == blow_up and len(spikes) == 1


def test_a_healthy_start_gets_no_early_warning():
    torch.manual_seed(0)
    monitor, _, losses = _train_lm(TinyGPT(d=64), 60, lr=3e-3)
    assert losses[-1] < losses[0]
    assert [e for e in monitor.events if e.severity in ("warning", "critical")] == []


# -- the task without a graph ------------------------------------------------------------------
def _regression(detach: bool, task: str = "auto"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sink = RowSink()
    monitor = Monitor(model, optimizer, sinks=[sink], sync_every=5, task=task)
    x, y = torch.randn(64, 8), torch.randn(64, 4)
    for _ in range(20):
        total = 0.0
        for part in range(2):  # gradient accumulation, nanoGPT's way: the reported loss is detached
            loss = F.mse_loss(model(x[part::2]), y[part::2]) / 2
            loss.backward()
            total += loss.detach() if detach else loss
        monitor.observe(total)
        optimizer.step()
        optimizer.zero_grad()
    summary = monitor.close()
    return summary, sink.row_list


def test_a_detached_loss_leaves_the_task_undecided_and_no_classification_signal_runs():
    summary, rows = _regression(detach=True)
    assert not any("log_z_mean" in r or "softmax_collapse_fraction" in r for r in rows)
    assert summary["task"] is None and "undecided" in summary["task_reason"]
    summary, rows = _regression(detach=False)
    assert summary["task"] == "regression" and "autograd graph" in summary["task_reason"]
    assert not any("log_z_mean" in r for r in rows)
    summary, rows = _regression(detach=True, task="classification")  # the user's word is final
    assert summary["task"] == "classification"
    assert [r["step"] for r in rows if "log_z_mean" in r] == [0, 5, 10, 15]
