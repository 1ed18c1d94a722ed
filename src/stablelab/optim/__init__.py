"""Optimizers and gradient transforms. `create(name, params, **kwargs)` is the registry.

Each optimizer is a functional core (`spam(params, grads, exp_avgs, ..., *, step, ..., foreach=None)`)
with a readable per-tensor path and a foreach path computing the same update, and a class holding
`param_groups` and `state` (torch.optim's shape; see `stablelab.optim.base`). Gradient transforms
on lists of tensors are in `stablelab.optim.transforms`.
"""

from stablelab.optim.adabelief import AdaBelief, adabelief
from stablelab.optim.adamp import AdamP, adamp
from stablelab.optim.ademamix import AdEMAMix, ademamix
from stablelab.optim.diffgrad import DiffGrad, diffgrad
from stablelab.optim.laprop import LaProp, laprop
from stablelab.optim.orthogonal import OrthogonalGradient, orthogonal_gradient
from stablelab.optim.registry import OPTIMIZERS, available, create, register
from stablelab.optim.spam import SPAM, spam
from stablelab.optim.stable_spam import StableSPAM, stable_spam
from stablelab.optim.transforms import clip_by_global_norm, orthogonal_projection

__all__ = ["OPTIMIZERS", "AdaBelief", "AdEMAMix", "AdamP", "DiffGrad", "LaProp", "OrthogonalGradient", "SPAM",
           "StableSPAM", "adabelief", "adamp", "ademamix", "available", "clip_by_global_norm", "create", "diffgrad",
           "laprop", "orthogonal_gradient", "orthogonal_projection", "register", "spam", "stable_spam"]
