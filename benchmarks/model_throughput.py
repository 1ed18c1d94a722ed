"""Tokens per second of one training step (forward, backward, AdamW) of the reference model
against a plain torch.nn.TransformerEncoder of the same size, measured in the same run.

    .venv/bin/python benchmarks/model_throughput.py [--width 128] [--depth 2] [--device cpu]

Both use causal attention, GELU MLP 4d, pre-LN, no biases, batch 16 x 64 bytes, fused AdamW.
(The monitor's cost on top of the step is measured in benchmarks/monitor_overhead.py.)"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from stablelab.models import Transformer, TransformerConfig


class PlainEncoderLM(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, seq_len: int):
        super().__init__()
        self.embed = nn.Embedding(256, width)
        self.pos = nn.Embedding(seq_len, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True, bias=False)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width, bias=False)
        self.head = nn.Linear(width, 256, bias=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq_len))

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        return self.head(self.norm(self.encoder(x, mask=self.mask, is_causal=True)))


def time_steps(model, tokens, targets, steps) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        loss = F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if tokens.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[5:]  # drop warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    batch, seq = 16, 64
    tokens = torch.randint(0, 256, (batch, seq), device=device)
    targets = torch.randint(0, 256, (batch, seq), device=device)
    ours = Transformer(TransformerConfig(d_model=args.width, n_layers=args.depth, seq_len=seq)).to(device)
    plain = PlainEncoderLM(args.width, args.depth, ours.config.n_heads, seq).to(device)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_plain = sum(p.numel() for p in plain.parameters())
    results = {}
    for _ in range(2):  # interleave to share machine noise
        results.setdefault("reference", []).extend(time_steps(ours, tokens, targets, args.steps // 2 + 5))
        results.setdefault("plain", []).extend(time_steps(plain, tokens, targets, args.steps // 2 + 5))
    tokens_per_step = batch * seq
    print(f"device {device}, threads {args.threads}, width {args.width}, depth {args.depth}, "
          f"params reference {n_ours:,} / plain {n_plain:,}")
    rates = {}
    for name, times in results.items():
        median = statistics.median(times)
        rates[name] = tokens_per_step / median
        print(f"{name:>10}: {median * 1e3:7.2f} ms/step  {rates[name]:9.0f} tokens/s")
    print(f"ratio reference / plain TransformerEncoder (tokens/s): {rates['reference'] / rates['plain']:.2f}")


if __name__ == "__main__":
    main()
