"""The optimizer registry: one name per optimizer, used by the CLI (`--optimizer`) and the report.

`OPTIMIZERS` is a plain dict name -> class or factory `(params, **kwargs) -> Optimizer`.
Names follow one weight-decay convention so the proxy study compares like with like: `weight_decay`
is AdamW's (decoupled, multiplied by the LR). The classes keep each method's own default; the
registry only switches DiffGrad (coupled L2 by default) and LaProp (decay not multiplied by the LR
by default) to that convention (`functools.partial`, so a caller may still override). Every other
setting is the class default, i.e. the official code's.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from stablelab.optim.adabelief import AdaBelief
from stablelab.optim.adamp import AdamP
from stablelab.optim.adamw8bit import AdamW8bit
from stablelab.optim.ademamix import AdEMAMix
from stablelab.optim.diffgrad import DiffGrad
from stablelab.optim.laprop import LaProp
from stablelab.optim.orthogonal import OrthogonalGradient
from stablelab.optim.spam import SPAM
from stablelab.optim.stability8bit import AdEMAMix8bit, StableSPAM8bit
from stablelab.optim.stable_spam import StableSPAM


def _adamw(params, **kwargs) -> torch.optim.Optimizer:
    # torch's fastest AdamW on the device: fused on CPU (torch >= 2.4) and CUDA.
    kwargs.setdefault("fused", True)
    try:
        return torch.optim.AdamW(params, **kwargs)
    except (RuntimeError, TypeError):
        kwargs.pop("fused")
        return torch.optim.AdamW(params, **kwargs)


def _orthogonal_adamw(params, **kwargs) -> torch.optim.Optimizer:
    # perpGrad around torch's AdamW (Prieto et al. 2025): the gradient loses its component along w
    return OrthogonalGradient(_adamw(params, **kwargs))


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "spam": SPAM,
    "stable_spam": StableSPAM,
    "adabelief": AdaBelief,
    "diffgrad": partial(DiffGrad, weight_decouple=True),
    "adamp": AdamP,
    "laprop": partial(LaProp, fixed_decay=False),
    "ademamix": AdEMAMix,
    "orthogonal_adamw": _orthogonal_adamw,
    # 8-bit block-wise moments (Dettmers et al. 2022); same math and decay convention as the fp32 names
    "adamw8bit": AdamW8bit,
    "stable_spam8bit": StableSPAM8bit,
    "ademamix8bit": AdEMAMix8bit,
}


def register(name: str, factory: Callable[..., torch.optim.Optimizer]) -> None:
    """Add (or replace) a name: `register("my_adam", MyAdam)`."""
    OPTIMIZERS[name] = factory


def available() -> list[str]:
    """The registered names, sorted."""
    return sorted(OPTIMIZERS)


def create(name: str, params, **kwargs) -> torch.optim.Optimizer:
    """Build a registered optimizer: `create("adamw", model.parameters(), lr=1e-3)`."""
    try:
        factory = OPTIMIZERS[name]
    except KeyError:
        from stablelab.errors import UsageError

        raise UsageError(f"unknown optimizer {name!r}; available: {', '.join(available())}") from None
    return factory(params, **kwargs)
