"""Optimizers and gradient transforms. `create(name, params, **kwargs)` is the registry."""

from stablelab.optim.registry import available, create, register

__all__ = ["available", "create", "register"]
