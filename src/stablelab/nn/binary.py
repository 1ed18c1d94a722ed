"""Binary layers: real-valued latent weights, sign-binarised weights and activations, a scale.

    y = sign_est(x) (*) (alpha * sign_est(W)),   alpha_c = mean |W_c|   (one per output channel)

(*) is the layer's linear map (matmul or convolution); sign_est is sign() forward with the chosen
estimator's backward (`stablelab.nn.ste` or `stablelab.nn.reste`). The optimizer updates the
float latent weights W; only their signs and alpha reach the forward pass. Gradients also flow
through alpha (it is not detached), as in the official ReSTE code's scaling factor.

Per-output-channel alpha is XNOR-Net's (Rastegari et al. 2016, "XNOR-Net", eq. 4: alpha =
||W_c||_1 / n). The official ReSTE code (DravenALG/ReSTE, binarized_modules.py lines 40-42) uses one
alpha per layer, mean |W| over all dimensions: `scale="layer"` reproduces that. As there, the
first and last layers of a network are normally left in full precision (the model decides), and
the same t and o serve weights and activations (official t = t_a = 1.5, o = o_a scheduled alike).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stablelab.errors import UsageError
from stablelab.nn.estimators import RESTE_T, _check_reste, reste, ste

ESTIMATORS = ("reste", "ste")
SCALES = ("channel", "layer")


class _Binarized:
    """What BinaryLinear and BinaryConv2d share: the estimator switches and the binarisation."""

    def _init_binary(self, estimator: str, t: float, o: float, binarize_activations: bool,
                     scale: str) -> None:
        if estimator not in ESTIMATORS:
            raise UsageError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if scale not in SCALES:
            raise UsageError(f"scale must be one of {SCALES}, got {scale!r}")
        self.t, self.o = _check_reste(t, o)
        self.estimator, self.binarize_activations, self.scale = estimator, binarize_activations, scale

    def binarize(self, x: torch.Tensor) -> torch.Tensor:
        """sign(x) with this layer's estimator in the backward pass."""
        return ste(x) if self.estimator == "ste" else reste(x, self.t, self.o)

    def scaling_factor(self) -> torch.Tensor:
        """alpha: mean |W| per output channel (shape broadcastable to W), or one for the layer."""
        w = self.weight
        if self.scale == "layer":
            # official binarized_modules.py line 41: mean |w0| over all dimensions
            return w.abs().mean()
        # XNOR-Net eq. 4: alpha_c = ||W_c||_1 / n, over all dimensions but the output channel
        return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)

    def binary_weight(self) -> torch.Tensor:
        """The weight the forward pass uses: alpha * sign(W) (differentiable in W)."""
        return self.binarize(self.weight) * self.scaling_factor()

    def _binary_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.binarize(x) if self.binarize_activations else x

    def _binary_repr(self) -> str:
        return (f"estimator={self.estimator}, t={self.t}, o={self.o:.4g}, "
                f"binarize_activations={self.binarize_activations}, scale={self.scale}")


class BinaryLinear(_Binarized, nn.Linear):
    """nn.Linear with sign-binarised weights (times alpha) and, by default, binarised inputs.

    Args:
        in_features, out_features, bias: as nn.Linear (bias off by default: binary nets put a
            BatchNorm after the layer).
        estimator: "reste" (default, Wu et al. 2023) or "ste" (clipped at |x| <= 1).
        t, o: ReSTE's clipping threshold and power (o >= 1; anneal with `set_reste_o`).
        binarize_activations: binarise the input too (1W1A); False gives 1W32A.
        scale: "channel" (one alpha per output row) or "layer" (the official ReSTE code's).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *,
                 estimator: str = "reste", t: float = RESTE_T, o: float = 1.0,
                 binarize_activations: bool = True, scale: str = "channel",
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_binary(estimator, t, o, binarize_activations, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._binary_input(x), self.binary_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._binary_repr()}"


class BinaryConv2d(_Binarized, nn.Conv2d):
    """nn.Conv2d with sign-binarised weights (times alpha per output channel) and inputs, the
    official ReSTE BinarizeConv2d with a per-channel scale by default. Same switches as
    BinaryLinear after nn.Conv2d's own arguments (bias off by default)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = False, padding_mode: str = "zeros", *,
                 estimator: str = "reste", t: float = RESTE_T, o: float = 1.0,
                 binarize_activations: bool = True, scale: str = "channel",
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode,
                         device=device, dtype=dtype)
        self._init_binary(estimator, t, o, binarize_activations, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._binary_input(x), self.binary_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._binary_repr()}"


def set_reste_o(model: nn.Module, o: float) -> int:
    """Set ReSTE's power o on every binary layer of `model` (the official code sets o on every
    binarised conv once per epoch); returns how many layers were set. Use with
    `reste_o_schedule(epoch, epochs)`."""
    _, o = _check_reste(RESTE_T, o)
    layers = [m for m in model.modules() if isinstance(m, _Binarized)]
    for layer in layers:
        layer.o = o
    return len(layers)
