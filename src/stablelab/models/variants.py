"""The registry of model variants (mitigations) that the proxy study compares.

Names are checked here, where the variants are defined: a Variant rejects switches the reference
model does not have, the registry rejects a duplicate name, and `get_variant` is the one lookup the
grid, the run and the CLI share (an unknown name is a UsageError listing the known ones)."""

from __future__ import annotations

from dataclasses import dataclass

from stablelab.models.transformer import NORM_PLACEMENTS


@dataclass(frozen=True)
class Variant:
    name: str
    qk_norm: bool = False
    z_loss: float = 0.0
    norm_placement: str = "pre"
    description: str = ""

    def __post_init__(self):
        if not self.name or "," in self.name:  # the CLI reads variants as a comma-separated list
            raise ValueError(f"variant name must be non-empty and without commas, got {self.name!r}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"variant {self.name!r}: norm_placement must be one of {NORM_PLACEMENTS}")
        if not self.z_loss >= 0.0:
            raise ValueError(f"variant {self.name!r}: z_loss must be >= 0, got {self.z_loss}")


Z_LOSS = 1e-4  # paper's z-loss coefficient

def _registry(variants: list[Variant]) -> dict[str, Variant]:
    names = [v.name for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"variant names defined twice: {', '.join(duplicates)}")
    return {v.name: v for v in variants}


VARIANTS: dict[str, Variant] = _registry(
    [
        Variant("baseline", description="no qk-layernorm, no z-loss"),
        Variant("qk_norm", qk_norm=True, description="per-head LayerNorm on q and k"),
        Variant("z_loss", z_loss=Z_LOSS, description="z-loss 1e-4 * (log Z)^2"),
        Variant("qk_norm+z_loss", qk_norm=True, z_loss=Z_LOSS, description="both (paper default)"),
        Variant("peri_ln", norm_placement="peri", description="Peri-LN: x + LN(f(LN(x)))"),
        Variant("peri_ln+qk_norm", qk_norm=True, norm_placement="peri", description="Peri-LN and qk-layernorm"),
    ]
)


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        from stablelab.errors import UsageError

        raise UsageError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None
