"""The once-per-window read-back: every pending step's device tensors to the host in one transfer,
then one row per step in the columns of `stablelab.store.columns`."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from stablelab.monitor.measure import FAST


def read_back(entries: Sequence[dict[str, Any]], device: torch.device) -> list[dict[str, list[float]]]:
    """One host transfer for all entries: {key: values} per entry (keys fast, norms, update,
    sampled:<name>)."""
    parts, layout = [], []
    read: list[dict[str, list[float]]] = [{} for _ in entries]
    for index, entry in enumerate(entries):
        for key in ("fast", "norms", "update"):
            if key in entry:
                if isinstance(entry[key], list):  # host numbers: nothing to transfer
                    read[index][key] = entry[key]
                    continue
                parts.append(entry[key].reshape(-1))
                layout.append((index, key, parts[-1].numel()))
        for key, tensor in entry["sampled"].items():
            parts.append(tensor.reshape(-1))
            layout.append((index, "sampled:" + key, parts[-1].numel()))
    if not parts:
        return read
    values = torch.cat([p.float().to(device) for p in parts]).tolist()  # the one host sync
    offset = 0
    for index, key, n in layout:
        read[index][key] = values[offset:offset + n]
        offset += n
    return read


def fast_values(fast: torch.Tensor | list[float], update: torch.Tensor | None) -> list[float]:
    """This step's FAST values and, with `update` (the previous step's update ratios), their max and
    its index appended, in one host read (host numbers are already Python floats)."""
    if isinstance(fast, list):
        values = list(fast)
        if update is not None:
            ratios = update.tolist()
            best = max(range(len(ratios)), key=lambda j: ratios[j] if ratios[j] == ratios[j] else math.inf)
            values += [ratios[best], float(best)]
        return values
    parts = [fast]
    if update is not None:
        ratio_max, ratio_index = update.max(0)
        parts += [ratio_max.reshape(1), ratio_index.float().reshape(1)]
    return torch.cat(parts).tolist()


def fast_row(entry: dict[str, Any], values: Sequence[float], names: Sequence[str]) -> dict[str, Any]:
    """The every-step columns of one step from its FAST values."""
    fast = dict(zip(FAST, values))
    row = {"step": entry["step"], "lr": entry["lr"], "grad_norm": fast["grad_norm"],
           "grad_norm_typical": fast["grad_norm_typical"], "grad_norm_ratio_min": fast["grad_norm_ratio_min"],
           "spike_ratio_max": fast["spike_ratio_max"],
           "spike_param": names[int(fast["spike_index"])] if names else None,
           "nonfinite": bool(fast["nonfinite"]), "outlier": bool(fast["outlier"])}
    if entry["has_loss"]:
        row["loss"] = fast["loss"]
    return row


def first_nonfinite(names: Sequence[str], norms: Sequence[float]) -> str | None:
    for name, value in zip(names, norms):
        if not math.isfinite(value):
            return name
    return None


def step_row(entry: dict[str, Any], read: dict[str, list[float]], names: Sequence[str],
             matrices: Sequence[int]) -> dict[str, Any]:
    """The full row of one step: every-step columns, the update ratio, and the sampled signals."""
    row = fast_row(entry, read["fast"], names)
    row.update(entry["host"])
    norms = read["norms"]
    if row.get("nonfinite"):
        row["nonfinite_param"] = first_nonfinite(names, norms)
    if "update" in read and read["update"]:
        ratios = read["update"]
        best = max(range(len(ratios)), key=lambda j: ratios[j] if math.isfinite(ratios[j]) else math.inf)
        row["update_ratio_max"] = ratios[best]
        row["update_param"] = names[matrices[best]]
    sampled = {key[len("sampled:"):]: value for key, value in read.items() if key.startswith("sampled:")}
    if "attn" in sampled:
        attn = sampled["attn"]
        for i, value in enumerate(attn):
            row[f"attn_logit_max_l{i}"] = value
        finite = [(v, i) for i, v in enumerate(attn) if math.isfinite(v)]
        if finite:
            row["attn_logit_max"], row["attn_logit_layer"] = max(finite)
        elif attn:
            row["attn_logit_max"] = float("inf")
    if "logits" in sampled:
        logits = sampled["logits"]
        row["log_z_mean"], row["log_z_max"] = logits[:2]
        row["softmax_collapse_fraction"], row["softmax_collapse_lost_fraction"] = logits[2:4]
    if "cos" in sampled:
        for name, value, g in zip(names, sampled["cos"], norms):
            row[f"grad_norm/{name}"] = g
            row[f"cos_grad_weight/{name}"] = value
        if "update" in read:
            for j, value in enumerate(read["update"]):
                row[f"update_ratio/{names[matrices[j]]}"] = value
    if "eps_ratio" in sampled:
        ratios = sampled["eps_ratio"]
        j = min(range(len(ratios)), key=lambda k: ratios[k])
        if math.isfinite(ratios[j]):
            row["eps_ratio_min"], row["eps_param"] = ratios[j], names[matrices[j]]
    if "spike_fraction" in sampled:
        row["spike_fraction"] = sampled["spike_fraction"][0]
    return row
