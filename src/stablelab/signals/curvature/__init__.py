"""Curvature instruments: Hessian-vector products, top eigenvalues (Lanczos), trace (Hutchinson,
Hutch++), the Adam-preconditioned Hessian, per-layer blocks, and a scheduled sharpness check.

Every function here is a side-effect-free read of the model:
- the model's train/eval flags are left as they are (the Hessian is of the loss the caller trains on),
- parameters' `.grad` is never touched (products use `torch.autograd.grad`, which does not accumulate),
- the global RNG streams (CPU and the model's CUDA devices) are restored after the loss is evaluated,
  and probe vectors come from a private `torch.Generator`, so training's random stream is unchanged,
- buffers (e.g. BatchNorm running statistics) are restored after the forward pass.

`loss_fn(model, batch)` must return the scalar loss. The Hessian is built once per call (one forward
and one backward with `create_graph=True`); each product is then one double-backward pass.

The modules: hessian.py (the operator), eigenvalues.py (Lanczos, power iteration), trace.py
(Hutchinson, Hutch++), edge.py (stability thresholds, Adam preconditioner, per-layer blocks, the
sharpness check); every name is importable from here.
"""

from stablelab.signals.curvature.edge import (adam_preconditioner, adam_threshold, gd_threshold,
                                              layer_top_eigenvalues, sharpness_check)
from stablelab.signals.curvature.eigenvalues import (LanczosResult, lanczos, operator_top_eigenvalues,
                                                     power_iteration, top_eigenvalues)
from stablelab.signals.curvature.hessian import (HessianOperator, LossFn, hessian_vector_product,
                                                 preserved_state)
from stablelab.signals.curvature.trace import hessian_trace, operator_trace

__all__ = [
    "HessianOperator", "LanczosResult", "LossFn", "adam_preconditioner", "adam_threshold", "gd_threshold",
    "hessian_trace", "hessian_vector_product", "lanczos", "layer_top_eigenvalues", "operator_top_eigenvalues",
    "operator_trace", "power_iteration",
    "preserved_state", "sharpness_check", "top_eigenvalues",
]
