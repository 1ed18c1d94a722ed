"""Reading attention logits from models the monitor did not write: forward hooks on the modules
that produce q and k, never model edits.

A module is recognised by what it exposes, never by its class (the monitor imports no model). In
the order they are tried, first match wins:

1. A module with a method `monitor_attention_hooks(record) -> list of hook handles`: full control.
   Install forward hooks that, when `record.active` is true, call `record` with the max |attention
   logit| of the forward (a 0-d tensor); the monitor removes the handles when it disarms.
2. A module with `monitor_qk = ("q_name", "k_name")`: dotted names of the two submodules whose
   outputs are q and k per head, shaped (B, H, T, D); optional attributes `is_causal` (default
   True) and `scaling` (default 1/sqrt(D)). stablelab's reference `Attention` opts in this way
   (its q_norm / k_norm, nn.Identity without qk-norm).
3. `torch.nn.MultiheadAttention` (so `nn.TransformerEncoderLayer`; a pre-hook re-projects q and k
   from its inputs).
4. A fused qkv projection, by layout: a head count attribute (`n_head`, `num_heads`, ...; or the
   module's `config`) and one projection child whose width is (heads + 2 kv heads) x head size:
   nanoGPT, GPT-2, GPT-NeoX, Falcon, Phi-3 (see `split_qkv` for the three splits).
5. Separate q and k projections (`q_proj`/`k_proj`, `query`/`key`, `wq`/`wk`, `to_q`/`to_k`,
   `q_lin`/`k_lin`) with a head size: LLaMA, Mistral (grouped-query), BERT. Logits from q and k
   before any rotary embedding: RoPE rotates q and k without changing their norms, which is what
   grows, so the maximum is an estimate, not the exact post-RoPE value.

For a module you cannot edit, describe it from outside with
`register_attention(MyAttention, q="to_q", k="to_k", n_heads="heads")` (or `qkv="c_attn"` for one
fused projection, with `layout=`), or take full control with
`register_attention_adapter(predicate, attach)`; registrations are tried before the protocol."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from stablelab.errors import UsageError
from stablelab.monitor.attention_hooks import (LAYOUTS, Record, _active, _fused_hook, _heads, _max_logit,  # noqa: F401 (re-exported)
                                               _out_features, _pair_hooks, _queries, _safe, split_qkv)
from stablelab.monitor.attention_layouts import (_fused, _fused_layout, _separate, _separate_layout,
                                                 unrecognised_attention)
from stablelab.signals.attention import attention_logit_max_fast

Attach = Callable[[nn.Module, Record], list]  # returns hook handles
Matcher = Callable[[nn.Module], bool]

_ADAPTERS: list[tuple[Matcher, Attach]] = []  # user registrations first, then the built-ins


def _matcher(target: type | Matcher) -> Matcher:
    if isinstance(target, type):
        return lambda module: isinstance(module, target)
    return target


def register_attention_adapter(target: type | Matcher, attach: Attach) -> None:
    """Full control: `attach(module, record)` installs hooks on `module` that, when `record.active`
    is true, call `record` with the max |attention logit| (a 0-d tensor); returns the hook handles."""
    _ADAPTERS.insert(0, (_matcher(target), attach))


def _resolve(module: nn.Module, value: Any) -> Any:
    if isinstance(value, str):
        obj = module
        for part in value.split("."):
            obj = getattr(obj, part)
        return obj
    if callable(value):
        return value(module)
    return value


def register_attention(target: type | Matcher, *, n_heads: Any, q: str | None = None, k: str | None = None,
                       qkv: str | None = None, layout: str = "concatenated", n_kv_heads: Any = None,
                       causal: bool = True, scale: Any = None) -> None:
    """Describe an attention module by its q- and k-producing submodules, or by one fused projection.

    q, k: dotted names of submodules whose outputs are q and k, shaped (B, T, H*D) or (B, H, T, D);
    qkv: instead, the dotted name of one projection whose output (B, T, (H + 2 KV) D) holds q, k and
    v, split as `layout` says ("concatenated" [q | k | v], "per_head", "grouped": see split_qkv);
    n_heads / n_kv_heads / scale: an int, an attribute name, or a function of the module;
    scale None means 1/sqrt(d_head)."""
    if (qkv is None) == (q is None or k is None):
        raise UsageError("register_attention needs either q= and k=, or qkv=")
    if layout not in LAYOUTS:
        raise UsageError(f"layout must be one of {LAYOUTS}, got {layout!r}")

    def attach(module: nn.Module, record: Record) -> list:
        heads = int(_resolve(module, n_heads))
        kv_heads = int(_resolve(module, n_kv_heads)) if n_kv_heads is not None else heads
        factor = _resolve(module, scale) if scale is not None else None
        if qkv is not None:
            projection = _resolve(module, qkv)
            head_dim = _out_features(projection) // (heads + 2 * kv_heads)
            return _fused_hook(projection, record, heads, kv_heads, head_dim, layout, causal, factor)
        return _pair_hooks(_resolve(module, q), _resolve(module, k), record,
                           lambda x: _heads(x, heads), lambda x: _heads(x, kv_heads), causal, factor)

    register_attention_adapter(target, attach)


# -- the protocol and the built-in adapters ----------------------------------------------------
def _has_own_hooks(module: nn.Module) -> bool:
    return callable(getattr(module, "monitor_attention_hooks", None))


def _own_hooks(module: nn.Module, record: Record) -> list:
    return list(module.monitor_attention_hooks(record))


def _declares_qk(module: nn.Module) -> bool:
    names = getattr(module, "monitor_qk", None)
    return (isinstance(names, (tuple, list)) and len(names) == 2
            and all(isinstance(name, str) for name in names))


def _declared_qk(module: nn.Module, record: Record) -> list:
    # the declared submodules output per-head q and k, (B, H, T, D): no reshaping needed
    q_name, k_name = module.monitor_qk
    causal = bool(getattr(module, "is_causal", True))
    scale = getattr(module, "scaling", None)
    return _pair_hooks(_resolve(module, q_name), _resolve(module, k_name), record,
                       lambda x: x, lambda x: x, causal, scale)


def _multihead(module: nn.MultiheadAttention, record: Record) -> list:
    def pre_hook(mod, args, kwargs):
        if not _active(record):
            return
        query = args[0] if len(args) > 0 else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs["key"]
        if mod.batch_first:
            query, key = query.transpose(0, 1), key.transpose(0, 1)  # -> (T, B, E)
        e, h = mod.embed_dim, mod.num_heads
        with torch.no_grad():
            if mod._qkv_same_embed_dim:
                w_q, w_k = mod.in_proj_weight[:e], mod.in_proj_weight[e:2 * e]
            else:
                w_q, w_k = mod.q_proj_weight, mod.k_proj_weight
            b_q = b_k = None
            if mod.in_proj_bias is not None:
                b_q, b_k = mod.in_proj_bias[:e], mod.in_proj_bias[e:2 * e]
            q = nn.functional.linear(query.detach(), w_q, b_q)  # same projection as the module
            k = nn.functional.linear(key.detach(), w_k, b_k)
            t_q, b = q.shape[0], q.shape[1]
            q = q.view(t_q, b, h, e // h).permute(1, 2, 0, 3)
            k = k.view(k.shape[0], b, h, e // h).permute(1, 2, 0, 3)
            causal = bool(kwargs.get("is_causal", False))
            mask = kwargs.get("attn_mask", args[5] if len(args) > 5 else None)
            if mask is not None and not causal:
                z = (q.float() @ k.float().transpose(-2, -1)).abs() / math.sqrt(e // h)
                hidden = mask if mask.dtype == torch.bool else torch.isneginf(mask)
                if hidden.dim() == 3:  # (B * H, T, S)
                    hidden = hidden.view(b, h, *hidden.shape[1:])
                record(z.masked_fill(hidden, 0.0).amax())
            else:
                record(attention_logit_max_fast(q, k, causal=causal, queries=_queries(record)))

    return [module.register_forward_pre_hook(_safe(record, pre_hook), with_kwargs=True)]


_BUILTIN: list[tuple[Matcher, Attach]] = [
    (_has_own_hooks, _own_hooks),
    (_declares_qk, _declared_qk),
    (lambda m: isinstance(m, nn.MultiheadAttention), _multihead),
    (lambda m: _fused_layout(m) is not None, _fused),
    (lambda m: _separate_layout(m) is not None, _separate),
]


@dataclass
class AttentionLayer:
    """One attention module found in a model, with the adapter that hooks it. Hooks exist only
    while armed: the monitor arms them for sampled steps, so other steps pay nothing."""

    name: str
    module: nn.Module
    attach: Attach
    handles: list = field(default_factory=list)

    def arm(self, record: Record) -> None:
        if not self.handles:
            self.handles = list(self.attach(self.module, record))

    def disarm(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def find_attention(model: nn.Module) -> list[AttentionLayer]:
    """Every attention module of `model` in model order (not hooked yet). Modules inside an
    attention module already found are not matched again."""
    layers: list[AttentionLayer] = []
    for name, module in model.named_modules():
        if any(name.startswith(layer.name + ".") for layer in layers):
            continue
        for matches, attach in _ADAPTERS + _BUILTIN:
            if matches(module):
                layers.append(AttentionLayer(name, module, attach))
                break
    return layers


def attach_attention(model: nn.Module, make_record: Callable[[int], Record]) -> list[AttentionLayer]:
    """Find and hook every attention module; layer i reports through make_record(i)."""
    layers = find_attention(model)
    for i, layer in enumerate(layers):
        layer.arm(make_record(i))
    return layers

