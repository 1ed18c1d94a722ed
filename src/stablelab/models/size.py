"""Parameter counts of the reference model without allocating it (meta device)."""

from __future__ import annotations

import torch

from stablelab.models.transformer import Transformer, TransformerConfig


def count_parameters(config: TransformerConfig) -> int:
    with torch.device("meta"):
        model = Transformer(config)
    return sum(p.numel() for p in model.parameters())
