"""Hugging Face decoder-only models at proxy sizes, built from their `transformers` configs (no
download): GPT-2, LLaMA, Qwen3 and OLMo-2, byte vocabulary, width / depth / heads of the proxy.

Mitigations as each architecture spells them:
- Qwen3 (per-head RMSNorm on q and k) and OLMo-2 (RMSNorm on the whole q and k projections) have
  native qk-norm: the `qk_norm` variant keeps it, the others replace `q_norm` / `k_norm` by
  nn.Identity.
- LLaMA and GPT-2 have none: the `qk_norm` variant adds a per-head norm (LLaMA: RMSNorm, as Qwen3
  places it, after q_proj / k_proj and before RoPE; GPT-2: LayerNorm on the q and k thirds of
  c_attn) through forward hooks that replace the projections' outputs; the norms' gains are
  submodules of the attention (`q_norm`, `k_norm`), so they are trained and decayed like the rest.
- z-loss and weight decay live in the run's loss and optimizer, the same for every model.

Attention logits: every model runs the attention implementation registered here as
"stablelab_sdpa": the q and k it receives are what the model really multiplies (after qk-norm and
RoPE). Each attention module opts into the monitor's protocol (`monitor_attention_hooks`), so the
monitor records max |q k^T| * scaling from exactly those tensors, then torch's SDPA runs as usual."""

from __future__ import annotations

import torch
from torch import nn

from stablelab.signals.attention import attention_logit_max_fast

ATTENTION = "stablelab_sdpa"
VOCAB = 256  # bytes


def _active(record) -> bool:
    return bool(getattr(record, "active", True)) and torch.is_grad_enabled()


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF attention function: records the max attention logit when armed, then SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    record = getattr(module, "_stablelab_record", None)
    if record is not None and _active(record):
        try:
            with torch.no_grad():
                k = key.detach()
                if k.shape[1] != query.shape[1]:  # grouped-query attention
                    k = k.repeat_interleave(query.shape[1] // k.shape[1], dim=1)
                record(attention_logit_max_fast(query.detach(), k, causal=True, scale=scaling,
                                                queries=getattr(record, "queries", None) or None))
        except Exception as error:  # noqa: BLE001 - a monitor must not stop training
            report = getattr(record, "error", None)
            if report is None:
                raise
            report(error)
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                  dropout=dropout, **kwargs)


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTENTION, _attention)
        _registered = True


class _Armed:
    """The handle `monitor_attention_hooks` returns: remove() disarms the module."""

    def __init__(self, module: nn.Module):
        self.module = module

    def remove(self) -> None:
        self.module.__dict__.pop("_stablelab_record", None)


def _opt_in(attention: nn.Module) -> None:
    def monitor_attention_hooks(record):
        attention.__dict__["_stablelab_record"] = record
        return [_Armed(attention)]

    attention.__dict__["monitor_attention_hooks"] = monitor_attention_hooks


def _norm_heads(norm_q: nn.Module, norm_k: nn.Module, head_dim: int):
    """Forward hooks on q_proj / k_proj: (B, T, H*D) -> per-head norm -> (B, T, H*D)."""

    def per_head(norm):
        def hook(_module, _inputs, output):
            shape = output.shape
            return norm(output.view(*shape[:-1], shape[-1] // head_dim, head_dim)).view(shape)
        return hook

    return per_head(norm_q), per_head(norm_k)


def _add_llama_qk_norm(attention: nn.Module, eps: float) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    attention.q_norm, attention.k_norm = LlamaRMSNorm(attention.head_dim, eps), LlamaRMSNorm(attention.head_dim, eps)
    on_q, on_k = _norm_heads(attention.q_norm, attention.k_norm, attention.head_dim)
    attention.q_proj.register_forward_hook(on_q)
    attention.k_proj.register_forward_hook(on_k)


def _add_gpt2_qk_norm(attention: nn.Module) -> None:
    d, e = attention.head_dim, attention.embed_dim
    attention.q_norm, attention.k_norm = nn.LayerNorm(d), nn.LayerNorm(d)

    def hook(_module, _inputs, output):
        q, k, v = output.split(e, dim=-1)
        shape = q.shape
        q = attention.q_norm(q.reshape(*shape[:-1], -1, d)).reshape(shape)
        k = attention.k_norm(k.reshape(*shape[:-1], -1, d)).reshape(shape)
        return torch.cat([q, k, v], dim=-1)

    attention.c_attn.register_forward_hook(hook)


def swiglu_width(width: int) -> int:
    """LLaMA's hidden MLP size: 8/3 of the width (same parameter count as a 4x GELU MLP), rounded
    up to a multiple of 32 (so 32-element quantisation groups divide it)."""
    return -(-8 * width // 3 // 32) * 32


def hf_config(arch: str, width: int, depth: int, seq_len: int, d_head: int):
    """The transformers config of `arch` at this size (byte vocabulary, no dropout, untied head)."""
    import transformers as tf

    heads = width // d_head
    common = dict(vocab_size=VOCAB, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None)
    if arch == "gpt2":
        return tf.GPT2Config(n_positions=seq_len, n_embd=width, n_layer=depth, n_head=heads, n_inner=4 * width,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    kinds = {"llama": tf.LlamaConfig, "qwen3": tf.Qwen3Config, "olmo2": tf.Olmo2Config}
    return kinds[arch](hidden_size=width, intermediate_size=swiglu_width(width), num_hidden_layers=depth,
                       num_attention_heads=heads, num_key_value_heads=heads, head_dim=d_head,
                       max_position_embeddings=seq_len, attention_bias=False, attention_dropout=0.0, **common)


class CausalLM(nn.Module):
    """tokens (B, T) -> logits (B, T, 256) around a Hugging Face causal LM (`lm`)."""

    logits_module_name = "lm.lm_head"

    def __init__(self, arch: str, lm: nn.Module):
        super().__init__()
        self.arch, self.lm = arch, lm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=tokens, use_cache=False).logits

    def attention_modules(self) -> list[nn.Module]:
        layers = self.lm.transformer.h if self.arch == "gpt2" else self.lm.model.layers
        return [layer.attn if self.arch == "gpt2" else layer.self_attn for layer in layers]

    def first_mlp_weight(self) -> torch.Tensor:
        if self.arch == "gpt2":
            return self.lm.transformer.h[0].mlp.c_fc.weight
        return self.lm.model.layers[0].mlp.up_proj.weight


def build_hf(arch: str, width: int, depth: int, seq_len: int, d_head: int, qk_norm: bool,
             quantize=None) -> CausalLM:
    """One model of `arch` (gpt2, llama, qwen3, olmo2) at this size, qk-norm on or off;
    `quantize(model)` (fake quantisation) runs before the qk-norm hooks are added, so the hooks sit
    on the layers the model really calls."""
    from transformers import AutoModelForCausalLM

    _register()
    config = hf_config(arch, width, depth, seq_len, d_head)
    model = CausalLM(arch, AutoModelForCausalLM.from_config(config, attn_implementation=ATTENTION))
    if quantize is not None:
        quantize(model)
    for attention in model.attention_modules():
        if arch in ("qwen3", "olmo2") and not qk_norm:
            attention.q_norm, attention.k_norm = nn.Identity(), nn.Identity()
        elif arch == "llama" and qk_norm:
            _add_llama_qk_norm(attention, config.rms_norm_eps)
        elif arch == "gpt2" and qk_norm:
            _add_gpt2_qk_norm(attention)
        _opt_in(attention)
    return model
