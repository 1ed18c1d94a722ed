"""One schema for the per-step rows of a run (the monitor's, and so the proxy study's): the row
writer, the detectors, the run page and the proxy study's SQL all use these names. It lives with
the store, below the monitor and the report, so both can read it.

A row is one optimizer step. Columns marked `sampled` exist only on sampled steps (every
`sync_every`-th step); columns ending in `/` or `_l` are families with one column per parameter or
per layer (`grad_norm/<param>`, `attn_logit_max_l<layer>`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    description: str
    sampled: bool = False
    log_scale: bool = False


COLUMNS: tuple[Column, ...] = (
    Column("step", "optimizer step (0-based)"),
    Column("lr", "largest learning rate over param groups, as applied (after lr_backoff)"),
    Column("loss", "training loss passed to observe()"),
    Column("grad_norm", "global gradient norm (before clipping)", log_scale=True),
    Column("grad_norm_typical", "running typical gradient norm (EMA of log norm, on the device)", log_scale=True),
    Column("grad_norm_ratio_min", "min over tensors of ||g_i|| / its typical value: every tensor's gradient "
           "grew at least this much at once", log_scale=True),
    Column("spike_ratio_max", "max over tensors of mean(g^2) / mean(v) (SPAM's ratio, per tensor)", log_scale=True),
    Column("spike_param", "tensor with the largest spike ratio"),
    Column("nonfinite", "1 if the loss or a gradient was NaN or infinite"),
    Column("nonfinite_param", "first tensor (model order) with a non-finite gradient"),
    Column("outlier", "1 if the device-side rule judged the gradient an extreme outlier"),
    Column("skipped", "1 if the guard skipped this optimizer step"),
    Column("update_ratio_max", "max over weight matrices of ||delta w|| / ||w||", log_scale=True),
    Column("update_param", "matrix with the largest update ratio"),
    Column("attn_logit_max", "max attention logit over layers", sampled=True, log_scale=True),
    Column("attn_logit_layer", "layer holding the max attention logit", sampled=True),
    Column("attn_logit_max_l", "max attention logit per layer", sampled=True, log_scale=True),
    Column("log_z_mean", "output log Z (logsumexp of the logits), mean over positions", sampled=True),
    Column("log_z_max", "output max |log Z|", sampled=True),
    Column("softmax_collapse_fraction", "fraction of samples whose softmax sums to exactly 1 in the "
           "loss's dtype (Prieto et al. 2025)", sampled=True),
    Column("softmax_collapse_lost_fraction", "fraction of samples collapsed in the loss's dtype whose "
           "float32 non-top probability mass is material (training signal lost to precision)", sampled=True),
    Column("eps_ratio_min", "min over weight matrices of RMS(g) / AdamW eps", sampled=True, log_scale=True),
    Column("eps_param", "matrix with the smallest RMS(g) / eps", sampled=True),
    Column("spike_fraction", "fraction of elements with g^2 > 5000 v (SPAM)", sampled=True),
    Column("grad_norm/", "gradient norm per tensor", sampled=True),
    Column("cos_grad_weight/", "cos(grad, w) per tensor (NLM direction)", sampled=True),
    Column("update_ratio/", "update-to-weight ratio per matrix", sampled=True),
)

BY_NAME = {column.name: column for column in COLUMNS}


def layer_column(family: str, layer: int) -> str:
    """The per-layer column of a family, e.g. layer_column("attn_logit_max_l", 0)."""
    if family not in BY_NAME or not family.endswith("_l"):
        raise KeyError(f"{family!r} is not a per-layer column family")
    return f"{family}{layer}"


def describe(name: str) -> str:
    """The description of a column (families matched by prefix); '' for an unknown name."""
    if name in BY_NAME:
        return BY_NAME[name].description
    for column in COLUMNS:
        if column.name.endswith(("/", "_l")) and name.startswith(column.name):
            return column.description
    return ""
