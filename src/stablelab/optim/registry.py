"""The optimizer registry: one name per optimizer, used by the CLI (`--optimizer`) and the report."""

from __future__ import annotations

from typing import Callable

import torch

_REGISTRY: dict[str, Callable[..., torch.optim.Optimizer]] = {}


def register(name: str, factory: Callable[..., torch.optim.Optimizer]) -> None:
    _REGISTRY[name] = factory


def available() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, params, **kwargs) -> torch.optim.Optimizer:
    """Build a registered optimizer: `create("adamw", model.parameters(), lr=1e-3)`."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        from stablelab.errors import UsageError

        raise UsageError(f"unknown optimizer {name!r}; available: {', '.join(available())}") from None
    return factory(params, **kwargs)


def _adamw(params, **kwargs) -> torch.optim.Optimizer:
    # torch's fastest AdamW on the device: fused on CPU (torch >= 2.4) and CUDA.
    kwargs.setdefault("fused", True)
    try:
        return torch.optim.AdamW(params, **kwargs)
    except (RuntimeError, TypeError):
        kwargs.pop("fused")
        return torch.optim.AdamW(params, **kwargs)


register("adamw", _adamw)
