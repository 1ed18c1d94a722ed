"""8-bit optimizer moments, stepped chunk by chunk: the machinery AdamW8bit, StableSPAM8bit and AdEMAMix8bit share.

State format (per parameter with at least `min_8bit_size` elements; Dettmers et al. 2022, arXiv
2110.02861, as bitsandbytes): for each moment `<key>`, uint8 `<key>_codes` shaped like the
parameter and float32 `<key>_absmax`, one per block of `block_size` consecutive elements; first
moments use the signed dynamic map, second moments the unsigned one. Smaller parameters keep
float32 `<key>` tensors.

A step walks each tensor in chunks of 2^17 elements (whole blocks): dequantise the chunk's
moments into reusable float32 scratch, run the optimizer's float32 math on the chunk views, update
the parameter chunk, quantise the moments back (new absmax per block). The scratch stays in the
CPU's L2 cache and nothing of tensor size is allocated per step, which is what makes eager 8-bit
steps cheap on CPU; the extra memory is a few chunk-sized buffers per device, not float32 moments.

Rounding: quantisation uses the one-gather `blockwise.lookup_code` (nearest code of the centre of x's
11-significant-bit bucket: within half the map's gap plus 2^-11 |x|); `blockwise.quantize_blockwise` is
the exact nearest rounding, kept as the specification.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

import torch

from stablelab.optim.blockwise import dynamic_map, lookup_code, lookup_table, map_midpoints

__all__ = ["CHUNK", "Maps8bit", "Scratch", "chunk_ranges", "dequantize_chunk", "init_moments", "is_8bit",
           "maps_on", "moment_chunks", "quantize_chunk", "state_bytes_per_parameter", "zero_moments"]

CHUNK = 1 << 17  # elements per chunk: 512 KiB per float32 buffer; 2^16 and 2^18 measured slower on CPU
_TINY = torch.finfo(torch.float32).tiny


class Maps8bit:
    """The signed and unsigned dynamic maps on one device with their one-gather lookup tables."""

    def __init__(self, device: torch.device):
        self.signed = dynamic_map(True, device=device)
        self.unsigned = dynamic_map(False, device=device)
        self.signed_table = lookup_table(map_midpoints(self.signed))
        self.unsigned_table = lookup_table(map_midpoints(self.unsigned))
        self.zero_code = {True: int(torch.searchsorted(self.signed, torch.zeros((), device=device))), False: 0}

    def map(self, signed: bool) -> torch.Tensor:
        return self.signed if signed else self.unsigned

    def table(self, signed: bool) -> torch.Tensor:
        return self.signed_table if signed else self.unsigned_table


@functools.lru_cache(maxsize=None)
def maps_on(device: torch.device) -> Maps8bit:
    """The maps on `device`, built once per process (read-only)."""
    return Maps8bit(torch.device(device))


class Scratch:
    """Reusable chunk-sized float32 buffers and one int32 key buffer on one device."""

    def __init__(self, device: torch.device, n_float: int, chunk: int = CHUNK):
        self.floats = [torch.empty(chunk, dtype=torch.float32, device=device) for _ in range(n_float)]
        self.keys = torch.empty(chunk, dtype=torch.int32, device=device)


def chunk_ranges(numel: int, block_size: int, chunk: int = CHUNK) -> list[tuple[int, int]]:
    """[start, stop) ranges covering 0..numel, each a whole number of blocks (the last maybe shorter)."""
    size = max(block_size, chunk // block_size * block_size)
    return [(start, min(start + size, numel)) for start in range(0, numel, size)]


def is_8bit(state: dict[str, Any], key: str) -> bool:
    return f"{key}_codes" in state


def init_moments(param: torch.Tensor, state: dict[str, Any], keys: dict[str, bool], block_size: int,
                 min_8bit_size: int) -> None:
    """Zero moments for `param`: 8-bit (`keys`: name -> signed map) if it has >= min_8bit_size elements."""
    if param.numel() >= min_8bit_size:
        maps = maps_on(param.device)
        n_blocks = -(-param.numel() // block_size)
        for key, signed in keys.items():
            state[f"{key}_codes"] = torch.full(param.shape, maps.zero_code[signed], dtype=torch.uint8,
                                               device=param.device)
            state[f"{key}_absmax"] = torch.zeros(n_blocks, dtype=torch.float32, device=param.device)
    else:
        for key in keys:
            state[key] = torch.zeros(param.shape, dtype=torch.float32, device=param.device)


def zero_moments(state: dict[str, Any], keys: dict[str, bool], device: torch.device) -> None:
    """Set moments to zero in place (both formats): codes of 0.0, absmax 0."""
    maps = maps_on(device)
    for key, signed in keys.items():
        if is_8bit(state, key):
            state[f"{key}_codes"].fill_(maps.zero_code[signed])
            state[f"{key}_absmax"].zero_()
        else:
            state[key].zero_()


def _blocks(x: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    full = x.numel() - x.numel() % block_size
    return x[:full].view(-1, block_size), x[full:]


def dequantize_chunk(codes: torch.Tensor, absmax: torch.Tensor, start: int, stop: int, code_map: torch.Tensor,
                     block_size: int, out: torch.Tensor, keys: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """map[codes[start:stop]] * absmax of each block (* scale), into out[:stop - start] (codes flat,
    start a block edge). `scale` (an EMA's beta, say) is folded into the per-block factors: one pass less."""
    n = stop - start
    if n != out.numel():
        out, keys = out[:n], keys[:n]
    keys.copy_(codes[start:stop])
    torch.index_select(code_map, 0, keys, out=out)
    first = start // block_size
    factors = absmax[first:first + -(-n // block_size)]
    if scale != 1.0:
        factors = factors * scale
    if n % block_size == 0:  # whole blocks (every chunk but a tensor's last)
        out.view(-1, block_size).mul_(factors.unsqueeze(1))
        return out
    full, tail = _blocks(out, block_size)
    if full.numel():
        full.mul_(factors[:full.shape[0]].unsqueeze(1))
    tail.mul_(factors[-1])
    return out


def quantize_chunk(values: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor, start: int,
                   table: torch.Tensor, block_size: int, scaled: torch.Tensor, keys: torch.Tensor,
                   non_negative: bool = False) -> None:
    """Store `values` (float32, one chunk starting at block edge `start`) as codes and new block absmax.

    `non_negative`: the values are known to be >= 0 (a second moment), so max needs no abs pass."""
    n = values.numel()
    if n != scaled.numel():
        scaled, keys = scaled[:n], keys[:n]
    first = start // block_size
    if n % block_size == 0:
        rows, scaled_rows = values.view(-1, block_size), scaled.view(-1, block_size)
        block_max = absmax[first:first + rows.shape[0]]
        torch.amax(rows if non_negative else torch.abs(rows, out=scaled_rows), dim=1, out=block_max)
        torch.mul(rows, block_max.clamp(min=_TINY).reciprocal_().unsqueeze(1), out=scaled_rows)
    else:
        full, tail = _blocks(values, block_size)
        scaled_full, scaled_tail = _blocks(scaled, block_size)
        if full.numel():
            block_max = absmax[first:first + full.shape[0]]
            torch.amax(torch.abs(full, out=scaled_full), dim=1, out=block_max)
            torch.mul(full, block_max.clamp(min=_TINY).reciprocal_().unsqueeze(1), out=scaled_full)
        last = absmax[first + full.shape[0]:first + full.shape[0] + 1]
        torch.amax(tail.abs(), dim=0, keepdim=True, out=last)
        torch.mul(tail, last.clamp(min=_TINY).reciprocal_(), out=scaled_tail)
    lookup_code(scaled, table, codes[start:start + n], scratch=keys)


def moment_chunks(state: dict[str, Any], keys: dict[str, bool], numel: int, block_size: int, maps: Maps8bit,
                  scratch: Scratch, scales: tuple[float, ...] | None = None,
                  ) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
    """For each chunk: (start, stop, float32 moments of the chunk); re-quantised when the loop moves on.

    `scratch` needs len(keys) + 1 float buffers (the last one is the quantiser's and free between
    chunks). `scales`: per moment, a factor the dequantised values come multiplied by (an EMA's
    beta: the caller then only adds the new term). Unsigned-map moments are taken to be >= 0.
    """
    names = list(keys)
    flat_codes = [state[f"{k}_codes"].view(-1) for k in names]
    absmaxes = [state[f"{k}_absmax"] for k in names]
    scales = scales or (1.0,) * len(names)
    for start, stop in chunk_ranges(numel, block_size, scratch.keys.numel()):
        moments = [dequantize_chunk(c, a, start, stop, maps.map(keys[k]), block_size, out, scratch.keys, scale)
                   for k, c, a, out, scale in zip(names, flat_codes, absmaxes, scratch.floats, scales)]
        yield start, stop, moments
        for k, c, a, m in zip(names, flat_codes, absmaxes, moments):
            quantize_chunk(m, c, a, start, maps.table(keys[k]), block_size, scratch.floats[-1], scratch.keys,
                           non_negative=not keys[k])


def state_bytes_per_parameter(state: dict) -> float:
    """Bytes of moment state (codes, absmax, float32 moments; not the step) per parameter element with state."""
    numel = sum(p.numel() for p in state)
    held = sum(t.numel() * t.element_size() for entry in state.values() for name, t in entry.items()
               if torch.is_tensor(t) and name != "step")
    return held / max(numel, 1)
