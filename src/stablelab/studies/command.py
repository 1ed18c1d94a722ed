"""A study's CLI command, derived from its settings dataclass (`stablelab.config`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable

from stablelab import config
from stablelab.config import Runtime
from stablelab.run.runtime import checked, threads_scope


@dataclass(frozen=True)
class Command:
    """What the CLI needs to know of a study: its settings class, the runtime options it takes,
    and `main(settings, runtime) -> exit status`. The CLI calls `configure(parser)` to add the
    flags and `run(args)`: settings parsed and checked, runtime checked (device included), threads
    set for the study and restored after it, then `main`."""

    settings: type
    main: Callable[[Any, Runtime], int]
    runtime: tuple[str, ...] = ("out", "device", "progress")
    out_required: bool = True
    runtime_defaults: dict[str, Any] = field(default_factory=dict)  # e.g. {"threads": 1}
    takes_preset: bool = False  # main(settings, runtime, preset=NAME): the study reports the preset

    def configure(self, parser: argparse.ArgumentParser) -> None:
        config.add_arguments(parser, self.settings)
        config.add_runtime_arguments(parser, self.runtime, self.out_required, self.runtime_defaults)

    def run(self, args: argparse.Namespace) -> int:
        values = {name: getattr(args, name, None) for name in config.setting_names(self.settings)}
        settings = config.from_flags(self.settings, values, getattr(args, "preset", "default"))
        runtime = checked(config.runtime_from_args(args))
        extra = {"preset": getattr(args, "preset", "default")} if self.takes_preset else {}
        with threads_scope(runtime.threads):
            return int(self.main(settings, runtime, **extra) or 0)
