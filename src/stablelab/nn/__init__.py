"""Model and loss building blocks: StableMax and the one small MLP."""

from stablelab.nn.mlp import MLP

from stablelab.nn.stablemax import (
    StableMax, log_stable_max, stable_max, stable_max_cross_entropy, stable_max_s,
)

__all__ = ["MLP", "StableMax", "log_stable_max", "stable_max", "stable_max_cross_entropy", "stable_max_s"]

# Low-bit and binary training (issue 13, parts 1-3)
from stablelab.nn.estimators import RESTE_INTERVAL, RESTE_T, reste, reste_o_schedule, reste_slope, ste
from stablelab.nn.binary import BinaryConv2d, BinaryLinear, set_reste_o
from stablelab.nn.quant import (
    FakeQuantConv1D, FakeQuantLinear, dequantize_model, fake_quantize, quantization_step, quantize_model,
)

__all__ += [
    "RESTE_INTERVAL", "RESTE_T", "reste", "reste_o_schedule", "reste_slope", "ste",
    "BinaryConv2d", "BinaryLinear", "set_reste_o",
    "FakeQuantConv1D", "FakeQuantLinear", "dequantize_model", "fake_quantize", "quantization_step",
    "quantize_model",
]
