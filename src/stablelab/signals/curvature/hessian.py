"""The Hessian as a linear operator on flat vectors, read without side effects on the model
(train/eval flags, .grad, RNG streams and buffers are left as they were)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


LossFn = Callable[[nn.Module, object], torch.Tensor]



@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Run a block that evaluates the model without leaving a trace: RNG streams and buffers are
    restored on exit, train/eval flags are put back as they were, and grad mode is on."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [m.training for m in model.modules()]
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        try:
            yield
        finally:
            with torch.no_grad():
                for live, saved in buffers:
                    if not torch.equal(live, saved):
                        # Through .data: no version bump, so the graph built above stays usable
                        # (train-mode BatchNorm saves its running stats but does not use them).
                        live.data.copy_(saved)
            for module, mode in zip(model.modules(), modes):
                module.training = mode  # a loss_fn that switched modes must not leak it



def _trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]



class HessianOperator:
    """v -> H v for the Hessian of `loss_fn(model, batch)` with respect to `params` (default: every
    parameter with requires_grad), on flat vectors. With `preconditioner` P (a diagonal, one tensor
    per parameter), the operator is the symmetric P^{-1/2} H P^{-1/2}, which has the eigenvalues of
    P^{-1} H (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability")."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, batch, params: Sequence[torch.Tensor] | None = None,
                 preconditioner: Sequence[torch.Tensor] | None = None):
        self.params = list(params) if params is not None else _trainable(model)
        if not self.params:
            raise ValueError("no parameters with requires_grad")
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.numel = sum(self.sizes)
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype if self.params[0].is_floating_point() else torch.float32
        self.products = 0
        # H v differentiates the gradient again: the fused attention kernels have no double
        # backward, the math kernel of F.scaled_dot_product_attention has
        with preserved_state(model), sdpa_kernel(SDPBackend.MATH):
            self.loss = loss_fn(model, batch)
            if self.loss.dim() != 0:
                raise ValueError("loss_fn must return a scalar loss")
            grads = torch.autograd.grad(self.loss, self.params, create_graph=True, allow_unused=True)
        # Gradients that are constant in the parameters have no graph: their Hessian rows are zero.
        self._live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self._grads = [grads[i] for i in self._live]
        self.gradient = self.flatten([g.detach() if g is not None else None for g in grads])
        self.set_preconditioner(preconditioner)

    def set_preconditioner(self, preconditioner: Sequence[torch.Tensor] | None) -> None:
        """Switch to P^{-1/2} H P^{-1/2} (None: plain H) without rebuilding the gradient graph."""
        # P^{-1/2}, flattened; P must be positive (Adam's sqrt(v_hat) + eps is).
        self._scale = None if preconditioner is None else self.flatten(
            [p.detach().to(self.dtype).rsqrt() for p in preconditioner])

    def flatten(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        parts = [
            (t.reshape(-1) if t is not None else torch.zeros(n, device=self.device, dtype=self.dtype))
            for t, n in zip(tensors, self.sizes)
        ]
        return torch.cat(parts).to(self.dtype)

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        return [chunk.view(shape) for chunk, shape in zip(vector.split(self.sizes), self.shapes)]

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        """H v (or P^{-1/2} H P^{-1/2} v) for a flat vector v; counts one Hessian-vector product."""
        self.products += 1
        if self._scale is not None:
            vector = vector * self._scale
        out = [torch.zeros_like(p) for p in self.params]
        if self._grads:
            pieces = self.unflatten(vector.to(self.dtype))
            # Pearlmutter's trick: H v = d/dw <grad L(w), v> (double backward, Pearlmutter 1994).
            hv = torch.autograd.grad(self._grads, self.params, grad_outputs=[pieces[i] for i in self._live],
                                     retain_graph=True, allow_unused=True)
            out = [h if h is not None else z for h, z in zip(hv, out)]
        result = self.flatten([h.detach() for h in out])
        if self._scale is not None:
            result = result * self._scale
        return result

    def random_vector(self, generator: torch.Generator, kind: str = "gaussian") -> torch.Tensor:
        """Probe vector drawn from a private CPU generator (same numbers on every device)."""
        if kind == "rademacher":
            v = torch.randint(0, 2, (self.numel,), generator=generator).to(self.dtype) * 2 - 1
        else:
            v = torch.randn(self.numel, generator=generator, dtype=torch.float64).to(self.dtype)
        return v.to(self.device)



def hessian_vector_product(model: nn.Module, loss_fn: LossFn, batch, vector: Sequence[torch.Tensor],
                           params: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """H v with v given per parameter (a list shaped like the parameters); returns H v the same way."""
    op = HessianOperator(model, loss_fn, batch, params)
    return op.unflatten(op(op.flatten(list(vector))))
