"""A small ReLU MLP for the algorithmic studies (Prieto et al. 2025: 2 hidden layers of 200, no biases)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """input -> [Linear -> ReLU] x len(hidden) -> Linear -> logits.

    Without biases the network is positively homogeneous: scaling every weight by c scales the
    logits by c^(depth), which is exactly the naive-loss-minimisation direction.
    """

    def __init__(self, input_dim: int, output_dim: int, hidden: Sequence[int] = (200, 200), bias: bool = False):
        super().__init__()
        sizes = [input_dim, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(i, o, bias=bias) for i, o in zip(sizes[:-1], sizes[1:]))
        self.output = nn.Linear(sizes[-1], output_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.output(x)
