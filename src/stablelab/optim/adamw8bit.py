"""AdamW with 8-bit block-wise quantised moments.

Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization", arXiv 2110.02861; the
reference implementation is bitsandbytes' `AdamW8bit` (bitsandbytes/optim/adamw.py and its CPU
update `_optimizer_update_8bit_blockwise_cpu` in backends/cpu/ops.py). Each step, per tensor:
dequantise m and v, take an AdamW step in float32 with them, update the parameter from the float32
moments, then quantise the new moments again (new absmax per block). Tensors with fewer than
`min_8bit_size` elements keep float32 moments (bitsandbytes does the same: for them the absmax
overhead and the error are not worth it).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.optim import Optimizer

from stablelab.optim.blockwise import (bucket_table, dequantize_blockwise, dynamic_map, map_midpoints,
                                      quantize_blockwise)

__all__ = ["AdamW8bit", "adamw8bit_tensor"]

_QUANTISED_KEYS = ("exp_avg_codes", "exp_avg_absmax", "exp_avg_sq_codes", "exp_avg_sq_absmax")


class _Maps:
    """The signed and unsigned dynamic maps and their midpoints on one device (computed once)."""

    def __init__(self, device: torch.device):
        self.signed = dynamic_map(True, device=device)
        self.unsigned = dynamic_map(False, device=device)
        self.signed_midpoints = map_midpoints(self.signed)
        self.unsigned_midpoints = map_midpoints(self.unsigned)
        self.signed_table = bucket_table(self.signed_midpoints)
        self.unsigned_table = bucket_table(self.unsigned_midpoints)


def adamw8bit_tensor(param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], *, step: int, lr: float,
                     beta1: float, beta2: float, eps: float, weight_decay: float, block_size: int,
                     maps: _Maps | None = None) -> None:
    """One AdamW step on one tensor, in place on `param` and `state` (the functional core).

    `state` holds either float32 `exp_avg` / `exp_avg_sq`, or the 8-bit form: uint8 `exp_avg_codes`
    / `exp_avg_sq_codes` shaped like the parameter and float32 `exp_avg_absmax` /
    `exp_avg_sq_absmax`, one per block of `block_size` elements. The update is computed in float32
    and rounded once into the parameter (bfloat16 parameters included).
    """
    work = param if param.dtype == torch.float32 else param.float()
    g = grad if grad.dtype == torch.float32 else grad.float()
    quantised = "exp_avg_codes" in state
    if quantised:
        maps = maps or _Maps(param.device)
        exp_avg = dequantize_blockwise(state["exp_avg_codes"], state["exp_avg_absmax"], maps.signed, block_size)
        exp_avg_sq = dequantize_blockwise(state["exp_avg_sq_codes"], state["exp_avg_sq_absmax"], maps.unsigned,
                                          block_size)
    else:
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    # decoupled weight decay first, as torch.optim.AdamW (Loshchilov & Hutter 2019, Algorithm 2)
    if weight_decay != 0.0:
        work.mul_(1.0 - lr * weight_decay)
    # m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2  (Kingma & Ba 2015, Algorithm 1)
    exp_avg.lerp_(g, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    # p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)  (torch.optim.AdamW's order)
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
    denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps)
    work.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
    if work is not param:
        param.copy_(work)
    if quantised:  # the parameter moved with the float32 moments; store them re-quantised (new absmax)
        quantize_blockwise(exp_avg, maps.signed, block_size, midpoints=maps.signed_midpoints,
                           table=maps.signed_table, out=(state["exp_avg_codes"], state["exp_avg_absmax"]))
        quantize_blockwise(exp_avg_sq, maps.unsigned, block_size, midpoints=maps.unsigned_midpoints,
                           table=maps.unsigned_table, out=(state["exp_avg_sq_codes"], state["exp_avg_sq_absmax"]))


class _KeepAsSaved:
    """Shields a saved state tensor from torch's cast-to-parameter-dtype in load_state_dict."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class AdamW8bit(Optimizer):
    """AdamW whose moments are stored in 8 bits: block-wise absmax and a dynamic map (Dettmers et al. 2022).

    Same math and defaults as torch.optim.AdamW (decoupled decay applied before the update); the
    first moment uses the signed dynamic map, the second the unsigned one, each block of
    `block_size` elements one float32 absmax: 2 + 8 / block_size bytes per parameter for both
    moments (2.03 at 256) instead of 8. Parameters with fewer than `min_8bit_size` elements keep
    float32 moments. bfloat16 / float16 parameters are updated in float32 and rounded once.

    Args:
        params, lr, betas, eps, weight_decay: as torch.optim.AdamW.
        block_size: elements per absmax (bitsandbytes: 256).
        min_8bit_size: smallest parameter (numel) with 8-bit moments (bitsandbytes: 4096).
    Not implemented (bitsandbytes has them): percentile clipping, max_unorm, paged states, amsgrad.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, block_size: int = 256, min_8bit_size: int = 4096):
        if not lr >= 0.0:
            raise ValueError(f"AdamW8bit: invalid lr {lr!r} (must be >= 0)")
        if not eps >= 0.0:
            raise ValueError(f"AdamW8bit: invalid eps {eps!r} (must be >= 0)")
        if not weight_decay >= 0.0:
            raise ValueError(f"AdamW8bit: invalid weight_decay {weight_decay!r} (must be >= 0)")
        for beta in betas:
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"AdamW8bit: invalid beta {beta!r} (must be in [0, 1))")
        if int(block_size) < 1:
            raise ValueError(f"AdamW8bit: invalid block_size {block_size!r} (must be >= 1)")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      block_size=int(block_size), min_8bit_size=int(min_8bit_size)))
        self._maps: dict[torch.device, _Maps] = {}

    def _maps_on(self, device: torch.device) -> _Maps:
        if device not in self._maps:
            self._maps[device] = _Maps(device)
        return self._maps[device]

    def _init_state(self, param: torch.Tensor, state: dict[str, Any], group: dict) -> None:
        state["step"] = 0
        if param.numel() >= group["min_8bit_size"]:
            n_blocks = -(-param.numel() // group["block_size"])
            maps = self._maps_on(param.device)
            zero_signed = int(torch.searchsorted(maps.signed, torch.zeros((), device=param.device)))
            # codes of 0.0 and absmax 0: the moments start at zero, as in Adam
            state["exp_avg_codes"] = torch.full(param.shape, zero_signed, dtype=torch.uint8, device=param.device)
            state["exp_avg_absmax"] = torch.zeros(n_blocks, dtype=torch.float32, device=param.device)
            state["exp_avg_sq_codes"] = torch.zeros(param.shape, dtype=torch.uint8, device=param.device)
            state["exp_avg_sq_absmax"] = torch.zeros(n_blocks, dtype=torch.float32, device=param.device)
        else:
            state["exp_avg"] = torch.zeros(param.shape, dtype=torch.float32, device=param.device)
            state["exp_avg_sq"] = torch.zeros(param.shape, dtype=torch.float32, device=param.device)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("AdamW8bit does not support sparse gradients")
                if torch.is_complex(param):
                    raise RuntimeError("AdamW8bit does not support complex parameters")
                state = self.state[param]
                if not state:
                    self._init_state(param, state, group)
                state["step"] += 1
                adamw8bit_tensor(param, param.grad, state, step=state["step"], lr=group["lr"], beta1=beta1,
                                 beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                                 block_size=group["block_size"], maps=self._maps_on(param.device))
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, but state tensors keep their saved dtype (uint8 codes, float32 absmax and moments)."""
        shielded = {key: {name: _KeepAsSaved(value) if torch.is_tensor(value) else value
                          for name, value in entry.items()}
                    for key, entry in state_dict["state"].items()}
        super().load_state_dict({**state_dict, "state": shielded})
        for param, entry in self.state.items():
            for name, value in entry.items():
                if isinstance(value, _KeepAsSaved):
                    entry[name] = value.tensor.to(device=param.device, copy=True)

    def state_bytes_per_parameter(self) -> float:
        """Bytes of moment state (codes, absmax, float32 moments) per parameter element with state."""
        numel = sum(p.numel() for p in self.state)
        held = sum(t.numel() * t.element_size() for entry in self.state.values() for t in entry.values()
                   if torch.is_tensor(t))
        return held / max(numel, 1)
