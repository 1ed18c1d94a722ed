"""Column names of the training-log formats people have, mapped to stablelab's signals.

Each source names the same quantity its own way: Lightning logs `train_loss` (or `train_loss_step`)
and `lr-AdamW`, the Hugging Face Trainer `loss`, `grad_norm` and `learning_rate`, W&B `train/loss`
beside `_step`, Megatron `lm loss`. ALIASES lists the known names per signal; `--map name=signal`
adds more. Names are compared case-insensitively."""

from __future__ import annotations

import re
from typing import Iterable

from stablelab.errors import UsageError

# signal -> known column names (most specific first)
ALIASES: dict[str, tuple[str, ...]] = {
    "step": ("step", "_step", "global_step", "trainer/global_step", "train/global_step", "iteration", "iter"),
    "loss": ("loss", "train_loss", "train/loss", "train_loss_step", "train/loss_step", "training_loss",
             "train/train_loss", "loss/train", "trainer/loss", "lm loss", "lm_loss", "train/lm_loss", "loss_step"),
    "grad_norm": ("grad_norm", "train/grad_norm", "gradient_norm", "train/gradient_norm", "grad-norm",
                  "total_norm", "grad_norm_step", "optim/grad_norm", "optimizer/grad_norm", "grad norm",
                  "train/grad-norm", "grad_2.0_norm_total", "grad_2_norm_total"),
    "lr": ("lr", "learning_rate", "train/learning_rate", "train/lr", "optim/lr", "trainer/learning_rate",
           "learning-rate", "lr-adamw", "lr-adam", "lr-sgd"),
}
# stablelab's own signal columns are read under their own names (a metrics.jsonl of the monitor)
OWN = ("update_ratio_max", "attn_logit_max", "log_z_mean", "log_z_max", "spike_ratio_max",
       "softmax_collapse_fraction", "eps_ratio_min",
       # the monitor's per-step gradient numbers (from every tensor's norm, every step)
       "grad_norm_typical", "grad_norm_ratio_min", "outlier", "trusted", "nonfinite")
SIGNALS = ("loss", "grad_norm", "lr") + OWN
_LR_PREFIX = re.compile(r"^lr-[a-z0-9_]+$")  # Lightning's LearningRateMonitor: lr-<Optimizer>[-group]
# per-tensor gradient norms: Lightning's `grad_norm(module, 2)` utility logs grad_2.0_norm/<parameter>
# (and the total as grad_2.0_norm_total); many scripts log grad_norm/<parameter>
_PER_TENSOR = re.compile(r"^(?:grad_2(?:\.0)?_norm|grad_norm)/(.+)$", re.IGNORECASE)


def tensor_columns(columns: Iterable[str]) -> dict[str, str]:
    """{parameter name: column} for the per-tensor gradient-norm columns a log has."""
    found = {}
    for column in columns:
        match = _PER_TENSOR.match(column)
        if match:
            found.setdefault(match.group(1), column)
    return found


def parse_mapping(items: Iterable[str] | None) -> dict[str, str]:
    """`--map name=signal` flags -> {column name: signal}; UsageError on a malformed one."""
    mapping: dict[str, str] = {}
    for item in items or ():
        name, sep, signal = item.partition("=")
        if not sep or not name or not signal:
            raise UsageError(f"--map takes COLUMN=SIGNAL, got {item!r}")
        if signal not in ("step",) + SIGNALS:
            raise UsageError(f"--map {item}: unknown signal {signal!r}; known: step, {', '.join(SIGNALS)}")
        mapping[name] = signal
    return mapping


def map_columns(columns: Iterable[str], extra: dict[str, str] | None = None) -> dict[str, str]:
    """{signal: the column that holds it} for the columns a log has. `extra` (from --map) wins;
    otherwise the first alias present, in ALIASES order."""
    columns = list(columns)
    lowered = {c.lower(): c for c in columns}
    found: dict[str, str] = {}
    for column, signal in (extra or {}).items():
        if column not in columns and column.lower() not in lowered:
            raise UsageError(f"--map {column}={signal}: the log has no column {column!r}; it has: "
                             f"{', '.join(columns[:30])}")
        found[signal] = column if column in columns else lowered[column.lower()]
    for signal, names in ALIASES.items():
        if signal in found:
            continue
        for name in names:
            if name in lowered:
                found[signal] = lowered[name]
                break
        else:
            if signal == "lr":
                prefixed = [c for c in columns if _LR_PREFIX.match(c.lower())]
                if prefixed:
                    found["lr"] = prefixed[0]
    for name in OWN:
        if name not in found and name in lowered:
            found[name] = lowered[name]
    return found
