"""The once-per-window read-back: every pending step's device values to the host in one transfer,
then one row per step in the columns its signals declare (monitor.signal_registry)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from stablelab.monitor.signal_registry import StepRecord


def read_back(records: Sequence[StepRecord], device: torch.device) -> list[dict[str, list[float]]]:
    """One host transfer for all records: {signal name: values} per record (values already on the
    host, the CPU step numbers, pass through)."""
    parts, layout = [], []
    read: list[dict[str, list[float]]] = [{} for _ in records]
    for index, record in enumerate(records):
        for name, value in record.values.items():
            if isinstance(value, list):  # host numbers: nothing to transfer
                read[index][name] = value
                continue
            parts.append(value.reshape(-1))
            layout.append((index, name, parts[-1].numel()))
    if not parts:
        return read
    values = torch.cat([p.float().to(device) for p in parts]).tolist()  # the one host sync
    offset = 0
    for index, name, n in layout:
        read[index][name] = values[offset:offset + n]
        offset += n
    return read


def fast_values(fast: torch.Tensor | list[float], update: torch.Tensor | None) -> list[float]:
    """This step's step numbers and, with `update` (the previous step's update ratios), their max and
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
