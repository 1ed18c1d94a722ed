"""What every stablelab optimizer shares: state layout, precision, path choice, closures, state_dict.

The torch.optim shape (torch/optim/adamw.py): per algorithm a functional core, e.g.
`spam(params, grads, exp_avgs, exp_avg_sqs, *, step, lr, ..., foreach=None)`, usable without any
class, which dispatches to
  - `_single_tensor_<name>`: a loop over tensors, the readable specification, and
  - `_multi_tensor_<name>`: the same math over lists with `torch._foreach_*` kernels,
tested against each other. The class (`StabilityOptimizer` subclass) only holds `param_groups`
and `state`, gathers the tensors of a group and calls its core, as torch.optim.AdamW does.
`foreach=None` picks the path the way torch does: foreach where foreach kernels exist (CUDA), the
per-tensor loop elsewhere (on CPU torch's foreach ops fall back to a loop that streams every
tensor through memory once per operation). `foreach=True/False` forces one.

There is no compiled path: the opt-in `torch.compile`d kernels of earlier versions were a third
copy of the math per optimizer and were removed (see docs/optimizers.md, Speed).

Precision: state tensors are float32 for float16/bfloat16 parameters (and the update is computed in
float32, then rounded once into the parameter); float32/float64 parameters keep state in their
own dtype. `load_state_dict` keeps that layout (torch's default would cast state to the parameter
dtype, which silently rounds bf16-parameter state).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable

import torch
from torch.optim import Optimizer

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def state_dtype(param: torch.Tensor) -> torch.dtype:
    """float32 state for half-precision parameters, the parameter's dtype otherwise."""
    return torch.float32 if param.dtype in _LOW_PRECISION else param.dtype


def _foreach_devices() -> tuple[str, ...]:
    try:
        from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices
        return tuple(_get_foreach_kernels_supported_devices())
    except ImportError:  # pragma: no cover - older torch
        return ("cuda",)


def use_foreach(foreach: bool | None, tensors: list[torch.Tensor]) -> bool:
    """The path a functional core takes: `foreach` if given, else foreach iff every tensor is on a
    device with foreach kernels (torch's default)."""
    if foreach is not None:
        return bool(foreach)
    devices = _foreach_devices()
    return all(t.device.type in devices for t in tensors)


class _KeepAsSaved:
    """Shields a saved state tensor from torch's cast-to-parameter-dtype in load_state_dict."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class StabilityOptimizer(Optimizer):
    """Base class: subclasses set `state_keys` and implement `_step_tensors`, which calls the
    algorithm's functional core on tensors that share device, dtype and step count.

    `state_keys` are zero-initialised tensors shaped like the parameter; `_scalar_state` returns
    extra per-tensor entries (0-d tensors or Python numbers). `state["step"]` (a Python int) counts
    the steps this tensor has taken, as in torch's own optimizers.
    """

    state_keys: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict[str, Any]):
        defaults.setdefault("foreach", None)
        for name in ("lr", "eps", "weight_decay"):
            if name in defaults and not defaults[name] >= 0.0:
                raise ValueError(f"{type(self).__name__}: invalid {name} {defaults[name]!r} (must be >= 0)")
        for beta in defaults.get("betas", ()):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{type(self).__name__}: invalid beta {beta!r} (must be in [0, 1))")
        super().__init__(params, defaults)

    # -- state ---------------------------------------------------------------------------------
    def _scalar_state(self, param: torch.Tensor) -> dict[str, Any]:
        return {}

    def _init_state(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        state["step"] = 0
        for key in self.state_keys:
            state[key] = torch.zeros_like(param, dtype=state_dtype(param), memory_format=torch.preserve_format)
        state.update(self._scalar_state(param))

    def _step_tensors(self, group: dict, step: int, params: list[torch.Tensor], grads: list[torch.Tensor],
                      states: list[dict], foreach: bool) -> None:
        """Call the functional core on these tensors (in place on `params` and `states`)."""
        raise NotImplementedError

    # -- step ----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = [], []
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients (a parameter of shape "
                        f"{tuple(param.shape)} has one); use nn.Embedding(sparse=False) or torch.optim.SparseAdam")
                if torch.is_complex(param):
                    raise RuntimeError(f"{type(self).__name__} does not support complex parameters")
                state = self.state[param]
                if not state:
                    self._init_state(param, state)
                state["step"] += 1
                params.append(param)
                grads.append(param.grad)
            if params:
                self._step_group(group, params, grads, use_foreach(group.get("foreach"), params))
        return loss

    def _step_group(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor], foreach: bool) -> None:
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for i, param in enumerate(params):
            buckets[(param.device, param.dtype, self.state[param]["step"])].append(i)
        for (_, dtype, step), indices in buckets.items():
            ps = [params[i] for i in indices]
            gs = [grads[i] for i in indices]
            states = [self.state[p] for p in ps]
            if dtype not in _LOW_PRECISION:
                self._step_tensors(group, step, ps, gs, states, foreach)
            elif foreach:
                work = [p.float() for p in ps]  # compute in float32, round once into the parameter
                self._step_tensors(group, step, work, [g.float() for g in gs], states, foreach)
                torch._foreach_copy_(ps, work)
            else:
                for p, g, s in zip(ps, gs, states):  # one float32 copy at a time
                    work = p.float()
                    self._step_tensors(group, step, [work], [g.float()], [s], foreach)
                    p.copy_(work)

    # -- state_dict ----------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, but state tensors keep their saved dtype (float32 for bf16 parameters)."""
        shielded = {
            key: {name: _KeepAsSaved(value) if torch.is_tensor(value) else value for name, value in entry.items()}
            for key, entry in state_dict["state"].items()
        }
        super().load_state_dict({**state_dict, "state": shielded})
        for param, entry in self.state.items():
            for name, value in entry.items():
                if isinstance(value, _KeepAsSaved):
                    entry[name] = value.tensor.to(device=param.device, copy=True)


def column(states: list[dict], key: str) -> list:
    """[state[key] for state in states]: one state entry of every tensor, for a functional core."""
    return [state[key] for state in states]


def adam_moments_(exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
                  grads: list[torch.Tensor], beta1: float, beta2: float) -> None:
    """m <- beta1 m + (1 - beta1) g; v <- beta2 v + (1 - beta2) g^2, in place over lists
    (Kingma & Ba 2015, Algorithm 1)."""
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)


def adam_denominators(exp_avg_sqs: list[torch.Tensor], beta2: float, step: int, eps: float) -> list[torch.Tensor]:
    """sqrt(v / (1 - beta2^t)) + eps over lists (Kingma & Ba 2015, Algorithm 1)."""
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, math.sqrt(bias_correction(beta2, step)))
    torch._foreach_add_(denoms, eps)
    return denoms


def bias_correction(beta: float, step: int) -> float:
    """1 - beta^t (Kingma & Ba 2015, Algorithm 1)."""
    return 1.0 - beta ** step
