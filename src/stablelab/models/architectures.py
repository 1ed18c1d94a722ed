"""The registry of architectures the proxy study trains (`--model`): stablelab's reference
transformer and Hugging Face models built from their transformers configs (models/hf.py).

`build_model(name, width, depth, variant, seq_len, d_head)` is the one way the run makes a model;
`check_model(name, variants, widths, d_head)` refuses, before any run, what an architecture cannot
do (an unknown name, a variant it has no spelling for, a width that is not a multiple of d_head)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from stablelab.errors import UsageError
from stablelab.models.transformer import Transformer, TransformerConfig
from stablelab.models.variants import get_variant


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[..., nn.Module]  # (width, depth, seq_len, d_head, qk_norm, norm_placement, quantize)
    norm_placements: tuple[str, ...] = ("pre",)
    description: str = ""


def _reference(width, depth, seq_len, d_head, qk_norm, norm_placement, quantize=None) -> nn.Module:
    model = Transformer(TransformerConfig(seq_len=seq_len, d_model=width, n_layers=depth, d_head=d_head,
                                          qk_norm=qk_norm, norm_placement=norm_placement))
    return model if quantize is None else quantize(model)


def _hf(arch: str) -> Callable[..., nn.Module]:
    def build(width, depth, seq_len, d_head, qk_norm, norm_placement, quantize=None) -> nn.Module:
        from stablelab.models.hf import build_hf

        return build_hf(arch, width, depth, seq_len, d_head, qk_norm, quantize)
    return build


MODELS: dict[str, Architecture] = {a.name: a for a in [
    Architecture("reference", _reference, ("pre", "peri"),
                 "stablelab's pre-LN transformer (LayerNorm, GELU, learned positions)"),
    Architecture("gpt2", _hf("gpt2"), description="GPT2Config: LayerNorm with biases, GELU, learned "
                 "positions; qk_norm adds per-head LayerNorm on q and k"),
    Architecture("llama", _hf("llama"), description="LlamaConfig: RMSNorm, SwiGLU, RoPE; qk_norm adds "
                 "per-head RMSNorm before RoPE (Qwen3's placement)"),
    Architecture("qwen3", _hf("qwen3"), description="Qwen3Config: LLaMA with native per-head qk RMSNorm"),
    Architecture("olmo2", _hf("olmo2"), description="Olmo2Config: norms after attention and MLP, native "
                 "RMSNorm on the whole q and k projections"),
]}


def get_model(name: str) -> Architecture:
    try:
        return MODELS[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def head_dim(width: int, d_head: int) -> int:
    return min(d_head, width)


def check_model(name: str, variants, widths, d_head: int) -> None:
    """UsageError (one line) for what `name` cannot build; checked before any run starts."""
    arch = get_model(name)
    for v in variants:
        variant = get_variant(v)
        if variant.norm_placement not in arch.norm_placements:
            raise UsageError(f"--model {name} has no {variant.norm_placement}-norm placement "
                             f"(variant {v!r}); it supports: {', '.join(arch.norm_placements)}")
    for w in widths:
        if w <= 0 or w % head_dim(w, d_head):
            raise UsageError(f"width {w} must be a positive multiple of the head size {d_head} "
                             f"(--model {name})")


# --precision: fake-quantised linear layers (stablelab.nn.quantize_model), output head excluded;
# (weight bits, activation bits); int4 keeps 8-bit activations.
PRECISIONS: dict[str, tuple[int, int] | None] = {"fp32": None, "int8": (8, 8), "int4": (4, 8)}


def check_precision(name: str) -> None:
    if name not in PRECISIONS:
        raise UsageError(f"unknown precision {name!r}; known: {', '.join(PRECISIONS)}")


def quantizer(precision: str, width: int) -> Callable[[nn.Module], nn.Module] | None:
    check_precision(precision)
    bits = PRECISIONS[precision]
    if bits is None:
        return None
    from stablelab.nn import quantize_model

    group = math.gcd(32, width)  # 32-element groups (fewer when the width is not a multiple of 32)
    return lambda model: quantize_model(model, weight_bits=bits[0], activation_bits=bits[1], group_size=group,
                                        exclude=("head", "lm.lm_head"))


def build_model(name: str, width: int, depth: int, variant: str, seq_len: int, d_head: int,
                precision: str = "fp32") -> nn.Module:
    v = get_variant(variant)
    return get_model(name).build(width, depth, seq_len, head_dim(width, d_head), v.qk_norm, v.norm_placement,
                                 quantizer(precision, width))


def count_model_parameters(name: str, width: int, depth: int, variant: str, seq_len: int, d_head: int) -> int:
    """Parameter count without allocating the weights (meta device)."""
    with torch.device("meta"):
        model = build_model(name, width, depth, variant, seq_len, d_head)
    return sum(p.numel() for p in model.parameters())
