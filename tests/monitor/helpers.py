"""Tiny models and tasks for the monitor tests (none of them the reference transformer)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from stablelab.monitor import Sink


class RowSink(Sink):
    """Keeps every row and event the monitor writes."""

    def __init__(self):
        self.row_list, self.event_list, self.closed = [], [], None

    def rows(self, rows):
        self.row_list.extend(rows)

    def events(self, events):
        self.event_list.extend(events)

    def close(self, summary):
        self.closed = summary


def classification_task(seed: int = 0, n: int = 512, d: int = 16, classes: int = 4):
    """Inputs and teacher labels (a random linear teacher), fixed by `seed`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    teacher = torch.randn(d, classes, generator=g)
    return x, (x @ teacher).argmax(-1), g


def mlp(d: int = 16, hidden: int = 32, classes: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, classes))


class EncoderClassifier(nn.Module):
    """nn.TransformerEncoder over a (B, T, d) sequence, mean-pooled, linear head."""

    def __init__(self, d: int = 16, heads: int = 2, layers: int = 2, classes: int = 4):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def state_copy(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict())}


def assert_same_state(a, b) -> None:
    """Bit-identical tensors in two nested state structures."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b) or (torch.isnan(a).any() and torch.equal(a.nan_to_num(), b.nan_to_num()))
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    else:
        assert a == b


def warnings_of(events, min_severity=("warning", "critical")):
    return [e for e in events if e.severity in min_severity]


def multiply_gradients_at(model: nn.Module, fault_step: int, factor: float = 1000.0):
    """A `before_observe` hook that plants a gradient spike (all gradients x factor) at one step."""
    def plant(step: int) -> None:
        if step == fault_step:
            for p in model.parameters():
                p.grad.mul_(factor)
    return plant


def train_classifier(model, optimizer, monitor, x, y, g, steps: int, before_observe=None, batch: int = 32):
    """The issue's plain loop: forward, backward, observe, step, zero_grad, on random batches of (x, y)."""
    for step in range(steps):
        index = torch.randint(0, len(x), (batch,), generator=g)
        loss = F.cross_entropy(model(x[index]), y[index])
        loss.backward()
        if before_observe is not None:
            before_observe(step)
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()


def full_batch_steps(model, optimizer, monitor, loss_fn, batch, steps: int) -> None:
    """`steps` full-batch steps: loss_fn(model, batch), backward, observe, step, zero_grad; then close."""
    for _ in range(steps):
        loss = loss_fn(model, batch)
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
    monitor.close()
