"""Shared by the 8-bit optimizer tests: a tiny MLP, a training loop on a fixed regression task, and
the parameters as one flat vector (imported as `optim_test_helpers`, see conftest.py)."""

import torch


def tiny_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 64)).to(dtype)


def train(model, optimizer, steps, seed=1):
    """`steps` optimizer steps on reversing a random input (MSE); the losses."""
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(32, 64, generator=generator).to(next(model.parameters()).dtype)
        loss = (model(x) - x.flip(1)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def flat(model):
    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
