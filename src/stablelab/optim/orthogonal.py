"""The orthogonal gradient ("perpGrad"/OrthoGrad; Prieto et al. 2025, arXiv 2501.04697, section 6).

Per parameter tensor the gradient loses its component along the weights, the direction that only
scales the logits (naive loss minimisation), and is rescaled to its original norm:

    g_perp = g - (<w, g> / (<w, w> + eps)) w,      g <- g_perp * ||g|| / ||g_perp||

`OrthogonalGradient(optimizer)` applies this (the transform `optim.transforms.orthogonal_projection`)
before any torch optimizer's step. It fixes the two bugs
of the official `OrthoGrad` wrapper: with a closure, the gradient the closure computes is projected
(the official code re-evaluates the closure inside the base step, after projecting), and
`state_dict()` / `load_state_dict()` carry the wrapped optimizer's state (the official one is empty).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from stablelab.optim.transforms import orthogonal_gradient, orthogonal_projection  # noqa: F401 (re-exported)


class OrthogonalGradient(torch.optim.Optimizer):
    """Wrap a torch optimizer: `OrthogonalGradient(torch.optim.AdamW(model.parameters(), lr=1e-2))`.

    `step()` projects every parameter's `.grad` in place, then steps the wrapped optimizer. The
    wrapper shares `param_groups` and `state` with it, so LR schedulers and `zero_grad` work as usual;
    `state_dict()` is the wrapped optimizer's, plus the wrapper's own settings.
    Optimizers that evaluate their closure several times per step (L-BFGS) are not supported:
    the closure is evaluated once, here, so that its gradient can be projected.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, eps: float = 1e-30, rescale: bool = True):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"OrthogonalGradient wraps a torch.optim.Optimizer, not {type(optimizer).__name__}")
        if isinstance(optimizer, torch.optim.LBFGS):
            raise TypeError("OrthogonalGradient cannot wrap LBFGS (it re-evaluates its closure)")
        self.optimizer = optimizer
        self.eps = float(eps)
        self.rescale = bool(rescale)
        self._sharing = False
        # Optimizer.__init__ sets up hooks and appends the *same* group dicts; then share the state.
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self._share()

    def _share(self) -> None:
        self._sharing = True
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state

    @torch.no_grad()
    def project_(self) -> None:
        """Replace each `.grad` by its orthogonal projection (in place)."""
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError("OrthogonalGradient does not support sparse gradients")
        if params:
            grads = [p.grad for p in params]
            torch._foreach_copy_(grads, orthogonal_projection(grads, params, eps=self.eps, rescale=self.rescale))

    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.project_()
        self.optimizer.step()  # no closure: it would recompute an unprojected gradient
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not getattr(self, "_sharing", False):  # called from Optimizer.__init__ with the shared groups
            return super().add_param_group(param_group)
        self.optimizer.add_param_group(param_group)
        self._share()

    def state_dict(self) -> dict[str, Any]:
        state = self.optimizer.state_dict()
        state["orthogonal_gradient"] = {"eps": self.eps, "rescale": self.rescale}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        settings = state_dict.pop("orthogonal_gradient", None)
        if settings is not None:
            self.eps = float(settings["eps"])
            self.rescale = bool(settings["rescale"])
        self.optimizer.load_state_dict(state_dict)
        self._share()  # torch replaces param_groups and state on load

    def __repr__(self) -> str:
        return f"OrthogonalGradient(eps={self.eps}, rescale={self.rescale}, optimizer={self.optimizer!r})"
