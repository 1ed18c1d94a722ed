"""The reference model: a byte-level decoder-only transformer with the switches of the
small-scale proxies paper (Wortsman et al. 2023, arXiv 2309.14322). Read it top to bottom:
config, Attention, MLP, Block, Transformer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NORM_PLACEMENTS = ("pre", "peri")


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 256          # bytes
    seq_len: int = 64
    d_model: int = 128
    n_layers: int = 2
    d_head: int = 32               # heads = d_model / d_head
    mlp_ratio: int = 4             # GELU MLP of width 4d (paper)
    qk_norm: bool = False          # per-head LayerNorm on q and k (paper section 3.1)
    norm_placement: str = "pre"    # "pre": x + f(LN(x)); "peri": x + LN(f(LN(x))) (Peri-LN)

    def __post_init__(self):
        if self.d_model % self.d_head:
            raise ValueError(f"d_model {self.d_model} is not a multiple of d_head {self.d_head}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"norm_placement must be one of {NORM_PLACEMENTS}")

    @property
    def n_heads(self) -> int:
        return self.d_model // self.d_head


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, bias=False)  # paper: no biases anywhere


class Attention(nn.Module):
    """Causal self-attention, logits scaled by 1/sqrt(d_head), optional qk-layernorm.

    q and k pass through `q_norm` / `k_norm` (nn.Identity without qk-norm), so a forward hook on
    those modules sees them per head, (B, H, T, D). `monitor_qk` names them for stablelab.monitor,
    which reads attention logits from any module that declares it (see monitor/attention.py)."""

    monitor_qk = ("q_norm", "k_norm")  # the monitor's attention protocol: q and k, (B, H, T, D)
    is_causal = True

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_heads, self.d_head = config.n_heads, config.d_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.q_norm = layer_norm(config.d_head) if config.qk_norm else nn.Identity()
        self.k_norm = layer_norm(config.d_head) if config.qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.is_causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, config.mlp_ratio * config.d_model, bias=False)
        self.down = nn.Linear(config.mlp_ratio * config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.peri = config.norm_placement == "peri"
        self.norm1, self.attn = layer_norm(config.d_model), Attention(config)
        self.norm2, self.mlp = layer_norm(config.d_model), MLP(config)
        if self.peri:  # Peri-LN: y = x + Norm(Module(Norm(x)))
            self.out_norm1, self.out_norm2 = layer_norm(config.d_model), layer_norm(config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.peri:
            x = x + self.out_norm1(self.attn(self.norm1(x)))
            return x + self.out_norm2(self.mlp(self.norm2(x)))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Decoder-only LM: token + learned position embeddings, blocks, final LayerNorm, untied head."""

    logits_module_name = "head"  # where the monitor reads output logits

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = layer_norm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # no weight tying
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Paper: weights ~ N(0, 1/fan_in) (truncated); embeddings N(0, 1).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=1.0 / math.sqrt(module.in_features))
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=1.0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))

    def first_mlp_weight(self) -> torch.Tensor:
        return self.blocks[0].mlp.up.weight
