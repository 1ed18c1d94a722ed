"""Fake-quantised training for any model: symmetric per-group absmax quantisation of the weights
and inputs of every linear layer, with a straight-through backward and full-precision masters.

For b bits and a group g of consecutive elements along the input dimension (one row of a weight,
one token's features of an activation):

    s_g   = max(absmax(g) / (2^(b-1) - 1/2), tiny)      one float32 scale per group
    q     = clamp(round(x / s_g), -2^(b-1), 2^(b-1) - 1)
    x_hat = q * s_g                                     |x_hat - x| <= s_g / 2 for every x in g

This is torchao's symmetric grid (torchao.quantization.quant_primitives, MappingType.SYMMETRIC:
scale = absmax / ((quant_max - quant_min) / 2), zero point 0, scale clamped at the smallest normal,
x multiplied by 1 / scale, round half to even), so `fake_quantize` agrees with torchao's
IntxFakeQuantizer(IntxFakeQuantizeConfig(torch.intN, group_size=g, is_symmetric=True)) (tested).
All 2^b levels are used; the largest positive value lands half a step past the top level and is
clamped to it, which keeps the error within half a step. Backward: the identity (the STE of
Bengio et al. 2013 / Jacob et al. 2018): the gradient reaches the master weight unchanged. torchao
instead zeroes it where its clamp bites: a positive group maximum whose x * (1/s) comes out as the
tie 2^(b-1) - 1/2 in float and rounds up past the top level (tested).

`quantize_model` swaps modules in place and keeps the same Parameter objects, so the masters stay
in their dtype (float32 for a float32 model), optimizer state and weight tying survive, and
`dequantize_model` puts the original modules back with the trained weights.
"""

from __future__ import annotations

import fnmatch
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stablelab.errors import UsageError

BITS = range(2, 9)


class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bits, group_size):
        return _quantize_dequantize(x, bits, group_size)

    @staticmethod
    def backward(ctx, grad_output):
        # straight-through: d x_hat / d x = 1 (round and the group scale are treated as constant)
        return grad_output, None, None


def _grid(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _group_scale(groups: torch.Tensor, bits: int) -> torch.Tensor:
    """One scale per row of `groups` (float32, (n_groups, group_size))."""
    q_min, q_max = _grid(bits)
    # torchao MappingType.SYMMETRIC: scale = absmax / ((q_max - q_min) / 2), clamped at eps
    scale = groups.abs().amax(dim=1, keepdim=True) / (float(q_max - q_min) / 2)
    return scale.clamp_min(torch.finfo(torch.float32).tiny)


def _groups(x: torch.Tensor, group_size: int | None) -> torch.Tensor:
    return x.float().reshape(-1, x.shape[-1] if group_size is None else group_size)


@torch.no_grad()
def _quantize_dequantize(x: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    groups = _groups(x, group_size)
    scale = _group_scale(groups, bits)
    q = torch.clamp(torch.round(groups * (1.0 / scale)), *_grid(bits))
    return (q * scale).reshape(x.shape).to(x.dtype)


def fake_quantize(x: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """x rounded to the symmetric per-group absmax grid of `bits` bits, groups of `group_size`
    consecutive elements of the last dimension (None: the whole last dimension). The backward is
    the identity (STE). Computed in float32, returned in x's dtype."""
    _check_bits(bits, "bits")
    _check_group(x.shape[-1], group_size, "the tensor's last dimension")
    return _FakeQuantize.apply(x, bits, group_size)


def quantization_step(x: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """The grid step s_g of every group, broadcast to x's shape (for error bounds and plots)."""
    _check_bits(bits, "bits")
    _check_group(x.shape[-1], group_size, "the tensor's last dimension")
    groups = _groups(x.detach(), group_size)
    return _group_scale(groups, bits).expand_as(groups).reshape(x.shape)


class _FakeQuantLayer:
    """Shared by the two layouts: bits, group size, and the original module to restore."""

    def _init_quant(self, original: nn.Module, weight_bits: int, activation_bits: int | None,
                    group_size: int | None) -> None:
        # the same Parameter objects: they are the masters, and optimizers and tying keep working
        self.register_parameter("weight", original.weight)
        self.register_parameter("bias", original.bias)
        self.weight_bits, self.activation_bits, self.group_size = weight_bits, activation_bits, group_size
        # kept out of _modules so state_dict keys do not change: "weight", "bias" as before
        object.__setattr__(self, "_original", original)

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation_bits is None:
            return x
        return _FakeQuantize.apply(x, self.activation_bits, self.group_size)

    def restore(self) -> nn.Module:
        """The original module, holding this layer's (trained) weight and bias."""
        original = self._original
        original.weight, original.bias = self.weight, self.bias
        return original

    def _quant_repr(self) -> str:
        return (f"weight_bits={self.weight_bits}, activation_bits={self.activation_bits}, "
                f"group_size={self.group_size}")


class FakeQuantLinear(_FakeQuantLayer, nn.Linear):
    """nn.Linear computing F.linear(fq(x), fq(W), b): weights grouped along each input row."""

    def __init__(self, linear: nn.Linear, weight_bits: int, activation_bits: int | None,
                 group_size: int | None):
        nn.Module.__init__(self)  # no new parameters: the linear layer's own are used
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._init_quant(linear, weight_bits, activation_bits, group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _FakeQuantize.apply(self.weight, self.weight_bits, self.group_size)
        return F.linear(self._quantize_input(x), weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._quant_repr()}"


class FakeQuantConv1D(_FakeQuantLayer, nn.Module):
    """Hugging Face's GPT-2 Conv1D (weight (in, out), y = x W + b), fake-quantised; the weight is
    grouped along its input dimension (dim 0), like FakeQuantLinear's rows."""

    def __init__(self, conv1d: nn.Module, weight_bits: int, activation_bits: int | None,
                 group_size: int | None):
        nn.Module.__init__(self)
        self.nf = conv1d.nf
        self._init_quant(conv1d, weight_bits, activation_bits, group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _FakeQuantize.apply(self.weight.t(), self.weight_bits, self.group_size)
        return F.linear(self._quantize_input(x), weight, self.bias)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, {self._quant_repr()}"


def _is_hf_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D, recognised without importing transformers
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.")


def _in_features(module: nn.Module) -> int:
    return module.weight.shape[0] if _is_hf_conv1d(module) else module.in_features


def quantize_model(model: nn.Module, weight_bits: int = 4, activation_bits: int | None = 8,
                   group_size: int | None = 32, exclude: Sequence[str] = ()) -> nn.Module:
    """Replace every nn.Linear (exactly that class; subclasses may have their own forward) and
    every Hugging Face Conv1D with a fake-quantised version, in place.

    Args:
        model: any module; a bare nn.Linear is replaced too (use the returned module).
        weight_bits: bits of the weight grid, 2..8.
        activation_bits: bits of the input grid, 2..8, or None to leave inputs in full precision.
        group_size: elements per scale along the input dimension; must divide every replaced
            layer's in_features. None: one scale per weight row and per token.
        exclude: module names (fnmatch patterns, e.g. "lm_head") to leave unquantised.
    Returns:
        the model (the same object unless `model` itself was a linear layer).
    Raises:
        UsageError: bits outside 2..8, a group size that does not divide a layer, a model that is
        already fake-quantised. Nothing is replaced when it raises.
    """
    _check_bits(weight_bits, "weight_bits")
    if activation_bits is not None:
        _check_bits(activation_bits, "activation_bits")
    if any(isinstance(m, _FakeQuantLayer) for m in model.modules()):
        raise UsageError("the model is already fake-quantised; call dequantize_model first")
    targets = [(name, m) for name, m in model.named_modules()
               if (type(m) is nn.Linear or _is_hf_conv1d(m))
               and not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)]
    for name, m in targets:  # check every layer before changing any
        _check_group(_in_features(m), group_size, f"layer {name or '<model>'!r}")
    for name, m in targets:
        cls = FakeQuantConv1D if _is_hf_conv1d(m) else FakeQuantLinear
        replacement = cls(m, weight_bits, activation_bits, group_size)
        if not name:
            return replacement
        _set_submodule(model, name, replacement)
    return model


def dequantize_model(model: nn.Module) -> nn.Module:
    """Undo quantize_model: each fake-quantised layer becomes its original module again, holding
    the current (trained) Parameters. Returns the model (the original layer for a bare one)."""
    if isinstance(model, _FakeQuantLayer):
        return model.restore()
    for name, m in list(model.named_modules()):
        if isinstance(m, _FakeQuantLayer):
            _set_submodule(model, name, m.restore())
    return model


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _check_bits(bits, what: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
        raise UsageError(f"{what} must be an integer from 2 to 8, got {bits!r}")


def _check_group(features: int, group_size, where: str) -> None:
    if group_size is None:
        return
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise UsageError(f"group_size must be a positive integer or None, got {group_size!r}")
    if features % group_size:
        raise UsageError(f"group_size {group_size} does not divide {where} ({features} inputs)")
