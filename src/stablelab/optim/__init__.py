"""Optimizers and gradient transforms. `create(name, params, **kwargs)` is the registry.

Each optimizer is a functional core (`spam(params, grads, exp_avgs, ..., *, step, ..., foreach=None)`)
with a readable per-tensor path and a foreach path computing the same update, and a class holding
`param_groups` and `state` (torch.optim's shape; see `stablelab.optim.base`). Gradient transforms
on lists of tensors are in `stablelab.optim.transforms`. `AdamW8bit`, `StableSPAM8bit` and
`AdEMAMix8bit` keep their moments in 8 bits (`stablelab.optim.state8bit`).
"""

from stablelab.optim.adabelief import AdaBelief, adabelief
from stablelab.optim.adamp import AdamP, adamp
from stablelab.optim.adamw8bit import AdamW8bit
from stablelab.optim.ademamix import AdEMAMix, ademamix
from stablelab.optim.diffgrad import DiffGrad, diffgrad
from stablelab.optim.laprop import LaProp, laprop
from stablelab.optim.orthogonal import OrthogonalGradient, orthogonal_gradient
from stablelab.optim.registry import OPTIMIZERS, available, create, register
from stablelab.optim.spam import SPAM, spam
from stablelab.optim.stability8bit import AdEMAMix8bit, StableSPAM8bit, ademamix8bit, stable_spam8bit
from stablelab.optim.stable_spam import StableSPAM, stable_spam
from stablelab.optim.transforms import clip_by_global_norm, orthogonal_projection

__all__ = ["OPTIMIZERS", "AdaBelief", "AdEMAMix", "AdEMAMix8bit", "AdamP", "AdamW8bit", "DiffGrad", "LaProp",
           "OrthogonalGradient", "SPAM", "StableSPAM", "StableSPAM8bit", "adabelief", "adamp", "ademamix",
           "ademamix8bit", "available", "clip_by_global_norm", "create", "diffgrad", "laprop", "orthogonal_gradient",
           "orthogonal_projection", "register", "spam", "stable_spam", "stable_spam8bit"]
