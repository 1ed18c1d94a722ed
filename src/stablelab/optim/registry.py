"""The optimizer registry: one name per optimizer, used by the CLI (`--optimizer`) and the report.

Names follow one weight-decay convention so the proxy study compares like with like: `weight_decay`
is AdamW's (decoupled, multiplied by the LR). The classes keep each method's own default; the
registry only switches DiffGrad (coupled L2 by default) and LaProp (decay not multiplied by the LR
by default) to that convention. Every other setting is the class default, i.e. the official code's.
"""

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


def _with(cls_path: str, **fixed) -> Callable[..., torch.optim.Optimizer]:
    """A factory for stablelab.optim.<module>.<Class>; `fixed` are defaults the caller may override."""
    module_name, class_name = cls_path.rsplit(".", 1)

    def factory(params, **kwargs):
        import importlib

        cls = getattr(importlib.import_module(f"stablelab.optim.{module_name}"), class_name)
        return cls(params, **{**fixed, **kwargs})

    factory.__name__ = class_name
    return factory


register("adamw", _adamw)
register("spam", _with("spam.SPAM"))
register("stable_spam", _with("spam.StableSPAM"))
register("adabelief", _with("adabelief.AdaBelief"))
register("diffgrad", _with("diffgrad.DiffGrad", weight_decouple=True))
register("adamp", _with("adamp.AdamP"))
register("laprop", _with("laprop.LaProp", fixed_decay=False))
register("ademamix", _with("ademamix.AdEMAMix"))


def _orthogonal_adamw(params, **kwargs) -> torch.optim.Optimizer:
    # perpGrad around torch's AdamW (Prieto et al. 2025): the gradient loses its component along w
    from stablelab.optim.orthogonal import OrthogonalGradient

    return OrthogonalGradient(_adamw(params, **kwargs))


register("orthogonal_adamw", _orthogonal_adamw)
