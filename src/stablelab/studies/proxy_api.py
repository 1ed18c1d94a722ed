"""The proxy study from Python, on any model: `stablelab.proxy.study(model_fn=..., out=...)`.

    from stablelab.proxy import study
    summary = study(model_fn=lambda width, depth, variant: MyModel(width, depth, qk_norm="qk_norm" in variant),
                    out="out/mine", widths=(64, 128), lrs=(1e-3, 1e-2, 1e-1), variants=("baseline", "qk_norm"))

`model_fn(width, depth, variant)` returns a module mapping byte tokens (B, T) to logits (B, T, 256).
The run adds what is not the model's: z-loss for variants with it, weight decay, the schedule and the
optimizer. The monitor finds its attention by protocol (docs/monitor.md): a module with
`monitor_qk = (q_name, k_name)` or `monitor_attention_hooks(record)`, PyTorch's MultiheadAttention or
a Hugging Face attention; optional `first_mlp_weight()` and `logits_module_name` name what the run
reads. The sweep, the store, the analysis and the report are the CLI's (`stablelab proxy`); the
functions must be picklable by cloudpickle (lambdas are) because runs execute in Dask workers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from stablelab import config
from stablelab.config import Runtime
from stablelab.io import read_json
from stablelab.run.runtime import checked, threads_scope
from stablelab.studies.proxy import ProxySettings, run_study


def study(model_fn: Callable[[int, int, str], Any] | None = None, *, out: str | Path, model: str = "reference",
          preset: str = "default", device: str = "cpu", workers: int | None = None, address: str | None = None,
          progress: bool = False, **settings: Any) -> dict:
    """Run (or resume) a proxy study and return its summary.json as a dict.

    model_fn: builds the model for (width, depth, variant); None trains `model` (a registry name).
    settings: any `stablelab proxy` setting by its field name (widths=(64, 128), steps=100,
        validate_width=256, ...); values as Python values, checked like the flags.
    Raises UsageError (one line) for bad settings, before any run starts."""
    lists = {f.name for f in dataclasses.fields(ProxySettings) if isinstance(f.default, tuple)}
    chosen = {k: (v,) if k in lists and not isinstance(v, (tuple, list, str)) else v for k, v in settings.items()}
    chosen["model"] = model
    parsed = config.from_flags(ProxySettings, chosen, preset)
    runtime = checked(Runtime(out=Path(out).expanduser(), device=device, workers=workers, address=address,
                              progress=progress))
    with threads_scope(None):
        run_study(parsed, runtime, model_fn=model_fn)
    return read_json(Path(runtime.out) / "summary.json")
