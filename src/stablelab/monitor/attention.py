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
4. Hugging Face GPT-2 attention (a hook on `c_attn`).
5. LLaMA-style attention: `q_proj` / `k_proj` Linear layers and `head_dim` (logits from q and k
   before the rotary embedding: RoPE rotates q and k without changing their norms, which is what
   grows, so the maximum is an estimate, not the exact post-RoPE value).

For a module you cannot edit, describe it from outside with
`register_attention(MyAttention, q="to_q", k="to_k", n_heads="heads")`, or take full control with
`register_attention_adapter(predicate, attach)`; registrations are tried before the protocol."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from stablelab.signals.attention import attention_logit_max_fast

# record(value) receives a 0-d tensor on the device: the max |logit| of one forward of one module.
# Hooks skip all work unless `record.active` is true (the monitor samples attention every
# `sync_every` steps, training forwards only).
Record = Callable[[torch.Tensor], None]


def _active(record: Record) -> bool:
    return bool(getattr(record, "active", True)) and torch.is_grad_enabled()


def _safe(record: Record, hook: Callable) -> Callable:
    """A hook that never breaks the model's forward: errors go to `record.error` when it has one."""

    def run(*args, **kwargs):
        try:
            return hook(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - a monitor must not stop training
            report = getattr(record, "error", None)
            if report is None:
                raise
            report(error)
            return None

    return run
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


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, H*D) -> (B, H, T, D); (B, H, T, D) passes through."""
    if x.dim() == 4:
        return x
    b, t, hd = x.shape
    return x.view(b, t, n_heads, hd // n_heads).transpose(1, 2)


def _queries(record: Record) -> int | None:
    """How many query positions the record wants read (the Monitor's `signal_rows`; None: all)."""
    return getattr(record, "queries", None) or None


def _max_logit(q: torch.Tensor, k: torch.Tensor, causal: bool, scale: float | None,
               queries: int | None = None) -> torch.Tensor:
    if k.shape[1] != q.shape[1]:  # grouped-query attention: each k head serves several q heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    return attention_logit_max_fast(q, k, causal=causal, scale=scale, queries=queries)


def register_attention(target: type | Matcher, *, q: str, k: str, n_heads: Any,
                       n_kv_heads: Any = None, causal: bool = True, scale: Any = None) -> None:
    """Describe an attention module by its q- and k-producing submodules.

    q, k: dotted names of submodules whose outputs are q and k, shaped (B, T, H*D) or (B, H, T, D);
    n_heads / n_kv_heads / scale: an int, an attribute name, or a function of the module;
    scale None means 1/sqrt(d_head)."""

    def attach(module: nn.Module, record: Record) -> list:
        heads = int(_resolve(module, n_heads))
        kv_heads = int(_resolve(module, n_kv_heads)) if n_kv_heads is not None else heads
        factor = _resolve(module, scale) if scale is not None else None
        return _pair_hooks(_resolve(module, q), _resolve(module, k), record,
                           lambda x: _heads(x, heads), lambda x: _heads(x, kv_heads), causal, factor)

    register_attention_adapter(target, attach)


def _pair_hooks(q_module: nn.Module, k_module: nn.Module, record: Record,
                q_shape: Callable, k_shape: Callable, causal: bool, scale: float | None) -> list:
    """Hooks on the q and k producers; the logit max is computed when both have run."""
    latest: dict[str, torch.Tensor] = {}

    def on_q(_module, _inputs, output):
        if _active(record):
            latest["q"] = output

    def on_k(_module, _inputs, output):
        q = latest.pop("q", None)
        if q is None:
            return
        with torch.no_grad():
            record(_max_logit(q_shape(q.detach()), k_shape(output.detach()), causal, scale, _queries(record)))

    return [q_module.register_forward_hook(_safe(record, on_q)),
            k_module.register_forward_hook(_safe(record, on_k))]


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


def _is_gpt2(module: nn.Module) -> bool:
    return type(module).__name__ == "GPT2Attention" and hasattr(module, "c_attn")


def _gpt2(module: nn.Module, record: Record) -> list:
    def hook(_c_attn, _inputs, output):
        mod = module  # the hook sits on c_attn; the shapes live on the attention module
        if not _active(record) or getattr(mod, "is_cross_attention", False):
            return
        q, k, _v = output.detach().split(mod.split_size, dim=2)
        scale = getattr(mod, "scaling", 1.0 / math.sqrt(mod.head_dim))
        with torch.no_grad():
            record(attention_logit_max_fast(_heads(q, mod.num_heads), _heads(k, mod.num_heads),
                                            causal=True, scale=scale, queries=_queries(record)))

    return [module.c_attn.register_forward_hook(_safe(record, hook))]


def _is_llama_style(module: nn.Module) -> bool:
    return (isinstance(getattr(module, "q_proj", None), nn.Linear)
            and isinstance(getattr(module, "k_proj", None), nn.Linear)
            and hasattr(module, "head_dim"))


def _llama(module: nn.Module, record: Record) -> list:
    d = module.head_dim
    scale = getattr(module, "scaling", 1.0 / math.sqrt(d))
    causal = getattr(module, "is_causal", True)
    return _pair_hooks(module.q_proj, module.k_proj, record,
                       lambda x: _heads(x, x.shape[-1] // d), lambda x: _heads(x, x.shape[-1] // d),
                       causal, scale)


_BUILTIN: list[tuple[Matcher, Attach]] = [
    (_has_own_hooks, _own_hooks),
    (_declares_qk, _declared_qk),
    (lambda m: isinstance(m, nn.MultiheadAttention), _multihead),
    (_is_gpt2, _gpt2),
    (_is_llama_style, _llama),
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
