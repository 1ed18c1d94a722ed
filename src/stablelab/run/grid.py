"""The proxy study's grid: the product of its axes, each point one run configuration
(`stablelab.run.proxy_run.ProxyRunConfig`)."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace
from typing import Any

from stablelab.errors import UsageError
from stablelab.models.variants import get_variant


@dataclass(frozen=True)
class ProxyGrid:
    """The axes of a proxy study. `base` is the run configuration (a dataclass such as
    stablelab.run.proxy_run.ProxyRunConfig) that every grid point copies, changing its axes."""

    base: Any
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    lrs: tuple[float, ...]
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    optimizers: tuple[str, ...] = ("adamw",)

    def validate(self) -> "ProxyGrid":
        for name, axis in (("widths", self.widths), ("depths", self.depths), ("lrs", self.lrs),
                           ("variants", self.variants), ("seeds", self.seeds)):
            if not axis:
                raise UsageError(f"--{name} is empty")
        for v in self.variants:
            get_variant(v)  # validated where variants are defined
        for lr in self.lrs:
            if not lr > 0:
                raise UsageError(f"learning rates must be positive, got {lr:g}")
        for w in self.widths:
            if w <= 0 or w % min(self.base.d_head, w):
                raise UsageError(f"width {w} must be a positive multiple of d_head {self.base.d_head}")
        for d in self.depths:
            if d <= 0:
                raise UsageError(f"depth must be positive, got {d}")
        if self.base.steps <= 0:
            raise UsageError(f"--steps must be positive, got {self.base.steps}")
        from stablelab.optim import available

        for o in self.optimizers:
            if o not in available():
                raise UsageError(f"unknown optimizer {o!r}; available: {', '.join(available())}")
        return self

    def runs(self) -> list[Any]:
        return [
            replace(self.base, variant=v, width=w, depth=d, lr=lr, seed=s, optimizer=o)
            for o, v, d, w, lr, s in itertools.product(
                self.optimizers, self.variants, self.depths, self.widths, self.lrs, self.seeds)
        ]

    def fingerprint(self) -> dict:
        """What defines the grid's results (not where or how fast it runs)."""
        base = asdict(self.base)
        for key in ("device", "threads", "extra", "variant", "width", "depth", "lr", "seed", "optimizer"):
            base.pop(key, None)
        return {
            "widths": list(self.widths), "depths": list(self.depths), "lrs": list(self.lrs),
            "variants": list(self.variants), "seeds": list(self.seeds),
            "optimizers": list(self.optimizers), "run": base,
        }
