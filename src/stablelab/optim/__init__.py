"""Optimizers and gradient transforms. `create(name, params, **kwargs)` is the registry.

Each optimizer has a readable per-tensor path and a foreach path computing the same update
(`foreach=None` picks the one torch would pick on that device); see `stablelab.optim.base`.
"""

from stablelab.optim.adabelief import AdaBelief
from stablelab.optim.adamp import AdamP
from stablelab.optim.ademamix import AdEMAMix
from stablelab.optim.diffgrad import DiffGrad
from stablelab.optim.laprop import LaProp
from stablelab.optim.orthogonal import OrthogonalGradient, orthogonal_gradient
from stablelab.optim.registry import available, create, register
from stablelab.optim.spam import SPAM, StableSPAM

__all__ = ["AdaBelief", "AdEMAMix", "AdamP", "DiffGrad", "LaProp", "OrthogonalGradient", "SPAM", "StableSPAM",
           "available", "create", "orthogonal_gradient", "register"]
