"""The scenarios' tasks: offline data (no downloads), the models users have, and one family per
model: its batches, held-out probe and loss."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=None)
def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits, stratified 75/25 split, standardised with the training split's statistics."""
    from stablelab.data.digits import load_digits

    data = load_digits(test_fraction=0.25, seed=0)
    mean, std = data.x_train.mean(0), data.x_train.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # pixels that are always 0 stay 0
    return (data.x_train - mean) / std, data.y_train, (data.x_test - mean) / std, data.y_test



@functools.lru_cache(maxsize=None)
def _regression(outputs: int, n: int = 2560, features: int = 8) -> tuple[torch.Tensor, ...]:
    """A smooth synthetic target, y_k = sin(x a_k) + 0.5 tanh(x b_k) + noise, standardised; the
    last 512 samples are held out. Fixed data (seed 1234), whatever the run's seed."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, features, generator=g)
    a = torch.randn(features, outputs, generator=g) / math.sqrt(features)
    b = torch.randn(features, outputs, generator=g) / math.sqrt(features)
    y = torch.sin(2.0 * x @ a) + 0.5 * torch.tanh(x @ b) + 0.05 * torch.randn(n, outputs, generator=g)
    y = (y - y.mean(0)) / y.std(0)
    return x[:-512], y[:-512], x[-512:], y[-512:]



@functools.lru_cache(maxsize=None)
def _byte_corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """The bytes of argparse's source (standard library, ~100 kB, vocab 256); the last 10% held out."""
    import argparse
    import inspect

    tokens = torch.tensor(list(inspect.getsource(argparse).encode("utf-8")), dtype=torch.long)
    cut = int(0.9 * len(tokens))
    return tokens[:cut], tokens[cut:]



def _windows(tokens: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    return tokens[starts[:, None] + torch.arange(length)]



class DigitsMLP(nn.Module):
    """64 -> 128 -> 128 -> 10, ReLU."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)  # registered last: the monitor's default logits module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))



class DigitsCNN(nn.Module):
    """1x8x8 -> conv 16 -> conv 32 -> max-pool -> 64 -> 10, ReLU."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))



class RegressionMLP(nn.Module):
    """8 -> 64 -> 64 -> outputs, GELU."""

    def __init__(self, outputs: int, features: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU())
        self.head = nn.Linear(64, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))



class EncoderLM(nn.Module):
    """A causal byte LM from torch's own blocks: token + learned position embeddings, pre-norm
    nn.TransformerEncoder under a causal mask (nn.MultiheadAttention: no qk-layernorm), LayerNorm, head."""

    def __init__(self, d_model: int = 32, n_layers: int = 2, n_heads: int = 2, context: int = 64, vocab: int = 256):
        super().__init__()
        self.token = nn.Embedding(vocab, d_model)  # the first nn.Embedding: token faults poison its output
        self.position = nn.Embedding(context, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        x = self.token(tokens) + self.position(torch.arange(t, device=tokens.device))
        x = self.encoder(x, mask=self.causal[:t, :t], is_causal=True)
        return self.head(self.norm(x))



def _gpt2(context: int = 64) -> nn.Module:
    """Hugging Face GPT-2 from a config (no download): 2 layers, 2 heads, width 32, bytes."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=256, n_positions=context,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=None, eos_token_id=None)  # GPT-2's 50256 lies outside 256 bytes
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # the loss it would pick anyway, named so transformers does not warn
    return model



@dataclass
class Task:
    """A family made concrete: the model and how to feed it and score it."""

    model: nn.Module
    sample: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]  # one training batch
    probe: tuple[torch.Tensor, torch.Tensor]  # a fixed held-out batch
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    head: nn.Module  # the module whose output is the logits (the output for a regression)
    classes: int | None = None  # for random labels
    embedding: nn.Module | None = None  # token inputs: float faults poison this module's output
    task: str = "classification"  # told to the monitor: the loop observes a detached, accumulated loss



def _rows(x: torch.Tensor, y: torch.Tensor, batch: int, device: str, dtype: torch.dtype):
    """Batches of rows as DataLoader(shuffle=True, drop_last=True) gives them: a fresh permutation
    from the run's generator every epoch."""
    x, y = x.to(device, dtype), y.to(device)
    pending: list[torch.Tensor] = []

    def sample(g: torch.Generator):
        if not pending:
            pending.extend(torch.randperm(len(x), generator=g).to(device).split(batch)[: len(x) // batch])
        index = pending.pop(0)
        return x[index], y[index]

    return sample



def _classification(model, x, y, x_probe, y_probe, batch, device, dtype) -> Task:
    return Task(model, _rows(x, y, batch, device, dtype), (x_probe.to(device, dtype), y_probe.to(device)),
                lambda m, inputs, targets: F.cross_entropy(m(inputs), targets), model.head, classes=10)



def _mlp_digits(settings: dict, device: str, dtype: torch.dtype) -> Task:
    x, y, x_probe, y_probe = _digits()
    return _classification(DigitsMLP(), x, y, x_probe, y_probe, settings.get("batch", 64), device, dtype)



def _cnn_digits(settings: dict, device: str, dtype: torch.dtype) -> Task:
    x, y, x_probe, y_probe = _digits()
    x, x_probe = x.reshape(-1, 1, 8, 8), x_probe.reshape(-1, 1, 8, 8)
    return _classification(DigitsCNN(), x, y, x_probe, y_probe, settings.get("batch", 64), device, dtype)



def _regression_family(outputs: int):
    def build(settings: dict, device: str, dtype: torch.dtype) -> Task:
        x, y, x_probe, y_probe = _regression(outputs)
        model = RegressionMLP(outputs)
        return Task(model, _rows(x, y.to(dtype), settings.get("batch", 64), device, dtype),
                    (x_probe.to(device, dtype), y_probe.to(device, dtype)),
                    lambda m, inputs, targets: F.mse_loss(m(inputs), targets), model.head, task="regression")

    return build



def _token_batches(settings: dict, device: str, length: int):
    """Random windows of `length` bytes for training; 16 evenly spaced held-out windows as the probe."""
    train, held_out = _byte_corpus()
    batch = settings.get("batch", 16)

    def sample(g: torch.Generator):
        return _windows(train, torch.randint(len(train) - length, (batch,), generator=g), length).to(device)

    probe = _windows(held_out, torch.linspace(0, len(held_out) - length - 1, 16).long(), length).to(device)
    return sample, probe



def _encoder_lm(settings: dict, device: str, dtype: torch.dtype) -> Task:
    context = settings.get("context", 64)
    model = EncoderLM(d_model=settings.get("d_model", 32), n_layers=settings.get("n_layers", 2),
                      n_heads=settings.get("n_heads", 2), context=context)
    windows, probe = _token_batches(settings, device, context + 1)

    def sample(g: torch.Generator):
        window = windows(g)
        return window[:, :-1], window[:, 1:]  # next-byte targets

    def loss(m, tokens, targets):
        logits = m(tokens)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    return Task(model, sample, (probe[:, :-1], probe[:, 1:]), loss, model.head, classes=256, embedding=model.token)



def _hf_gpt2(settings: dict, device: str, dtype: torch.dtype) -> Task:
    context = settings.get("context", 64)
    model = _gpt2(context)
    windows, probe = _token_batches(settings, device, context)

    def sample(g: torch.Generator):
        window = windows(g)
        return window, window.clone()  # labels = inputs: GPT-2 shifts them itself

    def loss(m, tokens, labels):
        return m(input_ids=tokens, labels=labels).loss
    return Task(model, sample, (probe, probe.clone()), loss, model.lm_head, classes=256,
                embedding=model.transformer.wte)



FAMILIES: dict[str, Callable[[dict, str, torch.dtype], Task]] = {
    "mlp_digits": _mlp_digits,
    "cnn_digits": _cnn_digits,
    "regression_1": _regression_family(1),
    "regression_multi": _regression_family(4),
    "encoder_lm": _encoder_lm,
    "hf_gpt2": _hf_gpt2,
}
