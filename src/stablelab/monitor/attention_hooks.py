"""The hook primitives that read attention logits: a record, hooks that never break the forward,
q and k from separate projections or split from one fused projection (`split_qkv`)."""

from __future__ import annotations

from typing import Callable

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



LAYOUTS = ("concatenated", "per_head", "grouped")


def _out_features(module: nn.Module) -> int | None:
    """Output width of a projection: nn.Linear, or Hugging Face's Conv1D (GPT-2), which keeps it in `nf`."""
    if isinstance(module, nn.Linear):
        return module.out_features
    nf = getattr(module, "nf", None)
    weight = getattr(module, "weight", None)
    if isinstance(nf, int) and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return nf
    return None


def split_qkv(x: torch.Tensor, heads: int, kv_heads: int, head_dim: int, layout: str):
    """The q (B, H, T, D) and k (B, KV, T, D) of a fused projection's output (B, T, (H + 2 KV) D).
    concatenated: [q | k | v] (nanoGPT, GPT-2, Falcon multi-query, Phi-3); per_head: [q_h k_h v_h]
    for each head (GPT-NeoX, Bloom, Falcon-7B); grouped: for each kv group its queries, its key, its
    value (Falcon's new decoder architecture)."""
    b, t = x.shape[0], x.shape[1]
    if layout == "concatenated":
        q = x[..., :heads * head_dim].reshape(b, t, heads, head_dim)
        k = x[..., heads * head_dim:(heads + kv_heads) * head_dim].reshape(b, t, kv_heads, head_dim)
    elif layout == "per_head":
        parts = x.reshape(b, t, heads, 3, head_dim)
        q, k = parts[..., 0, :], parts[..., 1, :]
    elif layout == "grouped":
        parts = x.reshape(b, t, kv_heads, heads // kv_heads + 2, head_dim)
        q, k = parts[..., :-2, :].reshape(b, t, heads, head_dim), parts[..., -2, :]
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return q.transpose(1, 2), k.transpose(1, 2)


def _fused_hook(projection: nn.Module, record: Record, heads: int, kv_heads: int, head_dim: int,
                layout: str, causal: bool, scale: float | None) -> list:
    def hook(_module, _inputs, output):
        if not _active(record):
            return
        with torch.no_grad():
            q, k = split_qkv(output.detach(), heads, kv_heads, head_dim, layout)
            record(_max_logit(q, k, causal, scale, _queries(record)))

    return [projection.register_forward_hook(_safe(record, hook))]


