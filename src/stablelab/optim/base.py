"""What every stablelab optimizer shares: state layout, precision, paths, closures, state_dict.

One algorithm, two speeds, one state format (the torch.optim pattern):
  - `_update(group, param, grad, state)`: the per-tensor path, the readable specification;
  - `_update_foreach(group, step, params, grads, states)`: the same math over lists of tensors
    with `torch._foreach_*` kernels, tested against the per-tensor path.
The path is chosen per device the way torch does it: foreach where foreach kernels exist (CUDA),
the per-tensor loop elsewhere (on CPU torch's foreach ops fall back to a slower loop that streams
every tensor through memory once per operation). `foreach=True/False` forces one.
Opt-in third path, `compiled=True`: `_kernel(params, grads, states, coefficients)` written with
plain tensor arithmetic and compiled once by `torch.compile`; every step-dependent number
(bias corrections, lr, reset flags) is passed as a 0-d tensor from `_coefficients`, so changing
them does not recompile. The first step pays the compilation (about a minute on a CPU).

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


class _KeepAsSaved:
    """Shields a saved state tensor from torch's cast-to-parameter-dtype in load_state_dict."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class StabilityOptimizer(Optimizer):
    """Base class: subclasses set `state_keys` and implement `_update` and `_update_foreach`.

    `state_keys` are zero-initialised tensors shaped like the parameter; `_scalar_state` returns
    extra per-tensor entries (0-d tensors or Python numbers). `state["step"]` (a Python int) counts
    the steps this tensor has taken, as in torch's own optimizers.
    """

    state_keys: tuple[str, ...] = ()
    kernel_state_keys: tuple[str, ...] | None = None  # state passed to `_kernel` (default: state_keys)

    def __init__(self, params, defaults: dict[str, Any]):
        defaults.setdefault("foreach", None)
        defaults.setdefault("compiled", False)
        if defaults["compiled"] and type(self)._kernel is StabilityOptimizer._kernel:
            raise ValueError(f"{type(self).__name__} has no compiled path yet; use compiled=False")
        self._compiled_kernel = None
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

    # -- the two paths -------------------------------------------------------------------------
    def _update(self, group: dict, param: torch.Tensor, grad: torch.Tensor, state: dict) -> None:
        """One tensor's update, in place on `param` and `state`; `grad` is read-only."""
        raise NotImplementedError

    def _update_foreach(self, group: dict, step: int, params: list[torch.Tensor],
                        grads: list[torch.Tensor], states: list[dict]) -> None:
        """The same update over tensors that share device, dtype and step count."""
        raise NotImplementedError

    def _coefficients(self, group: dict, step: int, states: list[dict]) -> dict[str, float] | None:
        """The step's scalars for `_kernel` (None: this bucket takes the foreach path instead)."""
        raise NotImplementedError

    @staticmethod
    def _kernel(params: list[torch.Tensor], grads: list[torch.Tensor], states: dict[str, list[torch.Tensor]],
                c: dict[str, torch.Tensor]) -> None:
        """The update in plain tensor arithmetic, for torch.compile; `c` holds 0-d tensors."""
        raise NotImplementedError

    def _update_compiled(self, group: dict, step: int, params: list[torch.Tensor],
                         grads: list[torch.Tensor], states: list[dict]) -> None:
        coefficients = self._coefficients(group, step, states)
        if coefficients is None:
            self._update_foreach(group, step, params, grads, states)
            return
        dtype, device = states[0][self.state_keys[0]].dtype, params[0].device
        c = {k: torch.tensor(float(v), dtype=dtype, device=device) for k, v in coefficients.items()}
        if self._compiled_kernel is None:
            self._compiled_kernel = torch.compile(type(self)._kernel)
        keys = self.kernel_state_keys or self.state_keys
        self._compiled_kernel(params, grads, {k: [s[k] for s in states] for k in keys}, c)

    def _uses_foreach(self, group: dict, params: list[torch.Tensor]) -> bool:
        choice = group.get("foreach")
        if choice is not None:
            return bool(choice)
        devices = _foreach_devices()
        return all(p.device.type in devices for p in params)

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
            if not params:
                continue
            if group["compiled"]:
                self._step_foreach(group, params, grads, self._update_compiled)
            elif self._uses_foreach(group, params):
                self._step_foreach(group, params, grads, self._update_foreach)
            else:
                for param, grad in zip(params, grads):
                    self._step_one(group, param, grad)
        return loss

    def _step_one(self, group: dict, param: torch.Tensor, grad: torch.Tensor) -> None:
        state = self.state[param]
        if param.dtype not in _LOW_PRECISION:
            self._update(group, param, grad, state)
            return
        work = param.float()  # compute in float32, round once into the parameter
        self._update(group, work, grad.float(), state)
        param.copy_(work)

    def _step_foreach(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor],
                      update: Callable[..., None]) -> None:
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for i, param in enumerate(params):
            buckets[(param.device, param.dtype, self.state[param]["step"])].append(i)
        for (_, dtype, step), indices in buckets.items():
            ps = [params[i] for i in indices]
            gs = [grads[i] for i in indices]
            states = [self.state[p] for p in ps]
            if dtype not in _LOW_PRECISION:
                update(group, step, ps, gs, states)
                continue
            work = [p.float() for p in ps]
            update(group, step, work, [g.float() for g in gs], states)
            torch._foreach_copy_(ps, work)

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
