"""What the monitor reads off the model and the loss before it measures: the logits module, the
task (from the loss's autograd graph) and the dtype the loss is computed in."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from stablelab.errors import UsageError


TASKS = ("auto", "classification", "regression")



_CLASSIFICATION_NODES = ("NllLoss", "LogSoftmax", "Softmax", "CrossEntropy", "BinaryCrossEntropy")



_REGRESSION_NODES = ("MseLoss", "L1Loss", "SmoothL1Loss", "HuberLoss")



def find_logits_module(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module] | None:
    """The module whose output is the logits: `name` if given, else the last nn.Linear registered."""
    if name is not None:
        try:
            return name, model.get_submodule(name)
        except AttributeError:
            raise UsageError(f"logits_module {name!r} is not a submodule of the model") from None
    last = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
            last = (module_name, module)
    return last



def infer_task(loss: Any, max_nodes: int = 256) -> str | None:
    """'classification' or 'regression' from the loss's autograd graph (a softmax / NLL node, or an
    MSE / L1 / Huber node, within the first `max_nodes` nodes); None when neither is found."""
    node = getattr(loss, "grad_fn", None)
    stack, seen = [node], 0
    while stack and seen < max_nodes:
        node = stack.pop()
        if node is None:
            continue
        seen += 1
        name = type(node).__name__
        if name.startswith(_CLASSIFICATION_NODES):
            return "classification"
        if name.startswith(_REGRESSION_NODES):
            return "regression"
        stack.extend(next_node for next_node, _ in node.next_functions)
    return None



VOCABULARY = 1024  # an output head this wide is a vocabulary: no regression head has so many outputs


def task_from_head(model: nn.Module, head: nn.Module | None) -> tuple[str | None, str]:
    """The task when the loss's graph cannot say: (task or None, why)."""
    weight = getattr(head, "weight", None)
    if weight is not None and any(isinstance(m, nn.Embedding) and m.weight is weight for m in model.modules()):
        return "classification", "the output head shares its weight with the input embedding (a language model)"
    width = getattr(head, "out_features", 0)
    if width >= VOCABULARY:
        return "classification", f"the output head has {width} outputs (a vocabulary)"
    return None, ("undecided: the loss passed to observe() carries no graph that names it (detached, a float, "
                  "or computed inside a compiled graph) and the output head does not say; classification "
                  "signals are off; pass task='classification' or task='regression'")


def decide_task(loss: Any, head_verdict: tuple[str | None, str]) -> tuple[str | None, str]:
    """The task from the loss's autograd graph, else the output head's verdict (task_from_head,
    worked out once per model by the caller)."""
    task = infer_task(loss) if getattr(loss, "grad_fn", None) is not None else None
    if task is not None:
        return task, f"the loss's autograd graph holds a {'cross-entropy' if task == 'classification' else 'regression'} loss"
    return head_verdict


def loss_dtype(logits: torch.Tensor) -> torch.dtype:
    """The dtype the cross-entropy of these logits is computed in: float32 under autocast (it is on
    autocast's float32 list), otherwise the logits' own dtype."""
    if torch.is_autocast_enabled(logits.device.type) and logits.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return logits.dtype
