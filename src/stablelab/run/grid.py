"""The proxy study's grid: the product of its axes, each point one run configuration
(`stablelab.run.proxy_run.ProxyRunConfig`)."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace
from typing import Any

from stablelab.errors import UsageError
from stablelab.models.architectures import check_model, check_precision
from stablelab.models.variants import get_variant

# Extra axes of the paper's section 3 (run-config field -> short name in run ids and reports).
AXES = {"warmup_fraction": "wu", "eps": "eps", "weight_decay": "wd", "mup_simple": "mup", "precision": ""}
# Run-config fields added after sweeps were stored: left out of the fingerprint at their default,
# so a sweep stored before they existed still resumes.
LATER_FIELDS = {"model": "reference", "precision": "fp32", "tag": "", "sharpness_every": 0, "sharpness_steps": 100}


def axis_label(name: str, value: Any) -> str:
    """`warmup_fraction`, 0.01 -> "wu0.01"; precision int8 -> "int8"; mup_simple True -> "mup"."""
    if isinstance(value, bool):
        return AXES[name] if value else f"no{AXES[name]}"
    return f"{AXES[name]}{value:g}" if isinstance(value, float) else f"{AXES[name]}{value}"


@dataclass(frozen=True)
class ProxyGrid:
    """The axes of a proxy study. `base` is the run configuration (a dataclass such as
    stablelab.run.proxy_run.ProxyRunConfig) that every grid point copies, changing its axes.
    `axes`: extra axes, (run-config field, values) pairs from AXES; an axis with one value only
    sets the base, an axis with several becomes part of every run id (`tag`)."""

    base: Any
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    lrs: tuple[float, ...]
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    optimizers: tuple[str, ...] = ("adamw",)
    axes: tuple[tuple[str, tuple], ...] = ()

    def swept(self) -> list[tuple[str, tuple]]:
        return [(name, values) for name, values in self.axes if len(values) > 1]

    def validate(self) -> "ProxyGrid":
        for name, axis in (("widths", self.widths), ("depths", self.depths), ("lrs", self.lrs),
                           ("variants", self.variants), ("seeds", self.seeds), *self.axes):
            if not axis:
                raise UsageError(f"--{name} is empty")
        for name, _values in self.axes:
            if name not in AXES:
                raise UsageError(f"unknown sweep axis {name!r}; known: {', '.join(AXES)}")
        for v in self.variants:
            get_variant(v)  # validated where variants are defined
        for lr in self.lrs:
            if not lr > 0:
                raise UsageError(f"learning rates must be positive, got {lr:g}")
        if getattr(self.base, "model", "reference") != "custom":
            check_model(getattr(self.base, "model", "reference"), self.variants, self.widths, self.base.d_head)
        for w in self.widths:
            if w <= 0 or w % min(self.base.d_head, w):
                raise UsageError(f"width {w} must be a positive multiple of d_head {self.base.d_head}")
        for d in self.depths:
            if d <= 0:
                raise UsageError(f"depth must be positive, got {d}")
        for name, values in self.axes:
            for value in values:
                if name == "precision":
                    check_precision(value)
                elif name in ("warmup_fraction",) and not 0 <= value < 1:
                    raise UsageError(f"--warmup values must be in [0, 1), got {value:g}")
                elif name in ("eps", "weight_decay") and not value >= 0:
                    raise UsageError(f"--{name.replace('_', '-')} values must be >= 0, got {value:g}")
        if self.base.steps <= 0:
            raise UsageError(f"--steps must be positive, got {self.base.steps}")
        from stablelab.optim import available

        for o in self.optimizers:
            if o not in available():
                raise UsageError(f"unknown optimizer {o!r}; available: {', '.join(available())}")
        return self

    def _base(self) -> Any:
        return replace(self.base, **{name: values[0] for name, values in self.axes if len(values) == 1})

    def runs(self) -> list[Any]:
        base, swept = self._base(), self.swept()
        names = [name for name, _ in swept]
        runs = []
        for combo in itertools.product(*(values for _, values in swept)):
            tag = "".join(f"_{axis_label(n, v)}" for n, v in zip(names, combo))
            point = replace(base, tag=tag, **dict(zip(names, combo)))
            runs += [replace(point, variant=v, width=w, depth=d, lr=lr, seed=s, optimizer=o)
                     for o, v, d, w, lr, s in itertools.product(
                         self.optimizers, self.variants, self.depths, self.widths, self.lrs, self.seeds)]
        return runs

    def fingerprint(self) -> dict:
        """What defines the grid's results (not where or how fast it runs)."""
        base = asdict(self._base())
        for key in ("device", "threads", "extra", "variant", "width", "depth", "lr", "seed", "optimizer"):
            base.pop(key, None)
        for key, default in LATER_FIELDS.items():
            if base.get(key) == default:
                base.pop(key)
        swept = {name: list(values) for name, values in self.swept()}
        for name in swept:
            base.pop(name, None)
        return {
            "widths": list(self.widths), "depths": list(self.depths), "lrs": list(self.lrs),
            "variants": list(self.variants), "seeds": list(self.seeds),
            "optimizers": list(self.optimizers), "run": base, **({"axes": swept} if swept else {}),
        }
