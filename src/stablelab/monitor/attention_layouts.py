"""Attention recognised by its layout, not its class: a fused qkv projection (nanoGPT, GPT-2,
GPT-NeoX, Falcon, Phi-3) or separate q and k projections (LLaMA, Mistral, BERT)."""

from __future__ import annotations

from typing import Any

from torch import nn

from stablelab.monitor.attention_hooks import Record, _fused_hook, _heads, _out_features, _pair_hooks

_HEADS = ("n_head", "num_heads", "num_attention_heads", "n_heads", "nheads", "heads")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_head", "n_kv_heads")
_HEAD_DIM = ("head_dim", "head_size", "attention_head_size")
_QK_PAIRS = (("q_proj", "k_proj"), ("query", "key"), ("wq", "wk"), ("to_q", "to_k"), ("q_lin", "k_lin"))


def _int_attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for owner in (module, getattr(module, "config", None)):
        for name in names:
            value = getattr(owner, name, None) if owner is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _is_leaf_block(module: nn.Module) -> bool:
    """Every projection inside the module is a direct child: an attention block, not a model or a
    layer that contains one."""
    return not any(_out_features(inner) for child in module.children()
                   for inner in child.modules() if inner is not child)


def _fused_layout(module: nn.Module) -> dict[str, Any] | None:
    """A module with a head count and exactly one direct projection child that outputs
    (H + 2 KV) * D: a fused qkv projection. The split is [q | k | v] unless the module says
    otherwise (Falcon's `new_decoder_architecture`; a `query_key_value` projection with as many
    kv heads as heads is interleaved per head, as GPT-NeoX, Bloom and Falcon-7B lay it out)."""
    heads = _int_attr(module, _HEADS)
    if heads is None or getattr(module, "is_cross_attention", False) or not _is_leaf_block(module):
        return None
    kv_heads = _int_attr(module, _KV_HEADS) or (1 if getattr(module, "multi_query", False) else heads)
    found = []
    for name, child in module.named_children():
        out = _out_features(child)
        if out is None or heads % kv_heads or out % (heads + 2 * kv_heads):
            continue
        head_dim = _int_attr(module, _HEAD_DIM) or out // (heads + 2 * kv_heads)
        if out == (heads + 2 * kv_heads) * head_dim:
            found.append((name, child, head_dim))
    if len(found) != 1:
        return None
    name, child, head_dim = found[0]
    layout = "concatenated"
    if getattr(module, "new_decoder_architecture", False):
        layout = "grouped"
    elif name == "query_key_value" and kv_heads == heads:
        layout = "per_head"
    return {"projection": child, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "layout": layout}


def _fused(module: nn.Module, record: Record) -> list:
    found = _fused_layout(module)
    scale = getattr(module, "scaling", None)
    return _fused_hook(found["projection"], record, found["heads"], found["kv_heads"], found["head_dim"],
                       found["layout"], bool(getattr(module, "is_causal", True)),
                       scale if isinstance(scale, float) else None)


def _separate_layout(module: nn.Module) -> tuple[nn.Module, nn.Module, int] | None:
    """Separate q and k projections (LLaMA, Mistral, BERT, DistilBERT, diffusers): two Linear
    children named as one of _QK_PAIRS, and a head size (an attribute, or out_features / heads)."""
    for q_name, k_name in _QK_PAIRS:
        q, k = getattr(module, q_name, None), getattr(module, k_name, None)
        if isinstance(q, nn.Linear) and isinstance(k, nn.Linear) and _is_leaf_block(module):
            head_dim = _int_attr(module, _HEAD_DIM)
            heads = _int_attr(module, _HEADS)
            if head_dim is None and heads:
                head_dim = q.out_features // heads
            if head_dim and q.out_features % head_dim == 0 and k.out_features % head_dim == 0:
                return q, k, head_dim
    return None


def _separate(module: nn.Module, record: Record) -> list:
    # LLaMA-style models rotate q and k (RoPE) after these projections; rotation keeps the norms,
    # which is what grows, so the maximum is an estimate of the post-RoPE one
    q, k, d = _separate_layout(module)
    scale = getattr(module, "scaling", None)
    causal = getattr(module, "is_causal", None)
    if causal is None:  # BERT-style encoders say is_decoder
        causal = bool(getattr(module, "is_decoder", True))
    return _pair_hooks(q, k, record, lambda x: _heads(x, x.shape[-1] // d), lambda x: _heads(x, x.shape[-1] // d),
                       bool(causal), scale if isinstance(scale, float) else None)


def unrecognised_attention(model: nn.Module, found: list) -> list[str]:
    """Modules that look like attention (the class name says so and they hold a projection) but
    match no adapter, outside and above every layer found."""
    names = []
    for name, module in model.named_modules():
        kind = type(module).__name__.lower()
        if "attention" not in kind and "attn" not in kind:
            continue
        if any(name == l.name or name.startswith(l.name + ".") or l.name.startswith(name + ".") for l in found):
            continue
        if any(_out_features(child) for child in module.children()):
            names.append(name)
    return names
