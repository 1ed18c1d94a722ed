"""The registry of model variants (mitigations) that the proxy study compares."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    qk_norm: bool = False
    z_loss: float = 0.0
    norm_placement: str = "pre"
    description: str = ""


Z_LOSS = 1e-4  # paper's z-loss coefficient

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("baseline", description="no qk-layernorm, no z-loss"),
        Variant("qk_norm", qk_norm=True, description="per-head LayerNorm on q and k"),
        Variant("z_loss", z_loss=Z_LOSS, description="z-loss 1e-4 * (log Z)^2"),
        Variant("qk_norm+z_loss", qk_norm=True, z_loss=Z_LOSS, description="both (paper default)"),
        Variant("peri_ln", norm_placement="peri", description="Peri-LN: x + LN(f(LN(x)))"),
        Variant("peri_ln+qk_norm", qk_norm=True, norm_placement="peri", description="Peri-LN and qk-layernorm"),
    ]
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        from stablelab.errors import UsageError

        raise UsageError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None
