"""Learning-rate schedule and parameter groups of the proxy recipe (Wortsman et al. 2023)."""

from __future__ import annotations

import math

from torch import nn


def warmup_cosine(step: int, peak_lr: float, warmup_steps: int, total_steps: int,
                  min_lr: float = 1e-5) -> float:
    """Linear warm-up to peak_lr, then cosine decay to min_lr at total_steps (paper's schedule)."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    low = min(min_lr, peak_lr)
    return low + 0.5 * (peak_lr - low) * (1.0 + math.cos(math.pi * progress))


def parameter_groups(model: nn.Module, peak_lr: float, independent_weight_decay: float,
                     mup_simple: bool = False, base_width: int = 64) -> list[dict]:
    """AdamW groups: matrices decay, vectors (norm gains) do not.

    Independent decay (paper): the decay per step is independent_weight_decay * schedule(t), not
    multiplied by the LR, i.e. AdamW weight_decay = independent_weight_decay / peak_lr.
    muParam-simple (paper section 3.4): the LR of hidden linear layers is scaled by
    base_fan_in / fan_in; embeddings and vectors keep the base LR."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    # fan_in of a weight: nn.Linear stores (out, in); Hugging Face's Conv1D (GPT-2) stores (in, out)
    fan_in = {id(m.weight): m.weight.shape[0] for m in model.modules()
              if type(m).__name__ == "Conv1D" and getattr(m, "weight", None) is not None}
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr_scale = 1.0
        if mup_simple and param.ndim == 2 and id(param) not in embeddings:
            lr_scale = base_width / fan_in.get(id(param), param.shape[1])
        decay = independent_weight_decay / (peak_lr * lr_scale) if param.ndim >= 2 else 0.0
        groups.setdefault((lr_scale, decay), []).append(param)
    return [
        {"params": params, "lr_scale": scale, "weight_decay": decay}
        for (scale, decay), params in groups.items()
    ]
