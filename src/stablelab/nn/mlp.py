"""The one small MLP of the package: the grokking and edge-of-stability studies (models/) and the
continual learners (continual/) all build this class. Grokking: Prieto et al. 2025, 2 x 200 ReLU, no
biases; edge of stability: a tanh MLP with biases, as in Cohen et al. 2021; stability gap: 2 x 256
ReLU with biases and one shared head (De Lange et al. 2023)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


class MLP(nn.Module):
    """input -> [Linear -> activation] x len(hidden) -> Linear -> logits (PyTorch's default init).

    Without biases a ReLU network is positively homogeneous: scaling every weight by c scales the
    logits by c^(depth), which is exactly the naive-loss-minimisation direction.

    Args:
        input_dim: features in.
        output_dim: logits out (classes).
        hidden: the width of each hidden layer, in order.
        bias: biases on every Linear.
        activation: a name from ACTIVATIONS.
    """

    def __init__(self, input_dim: int, output_dim: int, hidden: Sequence[int] = (200, 200),
                 bias: bool = False, activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = ACTIVATIONS[activation]
        sizes = [input_dim, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(i, o, bias=bias) for i, o in zip(sizes[:-1], sizes[1:]))
        self.output = nn.Linear(sizes[-1], output_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = self.activation(layer(x))
        return self.output(x)
