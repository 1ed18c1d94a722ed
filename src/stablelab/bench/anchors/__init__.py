"""The production trainers' hard-coded spike rules, as small pure online rule objects.

A benchmark runs them side by side on the same per-step stream (loss, grad norm) and compares
them with stablelab's monitor. Every rule is plain Python over floats (no torch), online, keeps
O(window) state, and never raises on a non-finite or missing value: what each one does with NaN/inf
is the official code's behaviour, spelled out in its docstring.

    rule = build_anchor("olmo_core")             # published defaults
    rule = build_anchor("zclip", max_grad_norm=None)
    for step, (loss, gnorm) in enumerate(stream):
        d = rule.update(step, loss, gnorm)       # Decision(flagged, clip_to, reason)

Registry names, default actions and the official code each one was checked against:

================  =======  ================================================================
name              action   official code
================  =======  ================================================================
``olmo_core``     skip     allenai/OLMo-core src/olmo_core/optim/skip_step_optimizer.py
``megatron``      None     NVIDIA/Megatron-LM megatron/core/rerun_state_machine.py
                           (``is_unexpectedly_large``), pretrain_gpt.py, param_and_grad_buffer.py
``llm_foundry``   None     mosaicml/llm-foundry llmfoundry/callbacks/kill_loss_spike_callback.py
``lightning``     stop     lightning/fabric/utilities/spike.py (lightning 2.6)
``zclip``         clip     zclip 1.0.0, zclip/zclip.py (class ZClip)
================  =======  ================================================================

Step counting: rules whose official gate depends on a batch counter (llm-foundry, Lightning) count
their own ``update`` calls that carried a loss, so the result does not depend on whether the
caller's ``step`` starts at 0 or 1; ``step`` is only used in the reasons.

The modules: base.py (AnchorRule, Decision, shared checks) and one module per trainer
(olmo_core.py, megatron.py, llm_foundry.py, lightning.py, zclip.py); this module holds the registry.
"""

from __future__ import annotations

import inspect
from typing import Any

from stablelab.bench.anchors.base import AnchorRule, Decision
from stablelab.bench.anchors.lightning import LightningSpikeRule
from stablelab.bench.anchors.llm_foundry import LlmFoundryRule
from stablelab.bench.anchors.megatron import MegatronRule
from stablelab.bench.anchors.olmo_core import OlmoCoreRule
from stablelab.bench.anchors.zclip import ZClipRule
from stablelab.errors import UsageError

__all__ = [
    "ANCHORS",
    "AnchorRule",
    "Decision",
    "LightningSpikeRule",
    "LlmFoundryRule",
    "MegatronRule",
    "OlmoCoreRule",
    "ZClipRule",
    "build_anchor",
]


ANCHORS: dict[str, type[AnchorRule]] = {
    cls.name: cls for cls in (OlmoCoreRule, MegatronRule, LlmFoundryRule, LightningSpikeRule, ZClipRule)
}


def build_anchor(name: str, **settings: Any) -> AnchorRule:
    """The anchor ``name`` with its published defaults, overridden by ``settings``.

    Raises UsageError (one line) on an unknown name, an unknown setting or a bad value.
    """
    cls = ANCHORS.get(name)
    if cls is None:
        raise UsageError(f"unknown anchor {name!r}; available: {', '.join(sorted(ANCHORS))}")
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(settings) - set(params))
    if unknown:
        raise UsageError(f"anchor {name!r} has no setting {', '.join(map(repr, unknown))}; "
                         f"its settings: {', '.join(params)}")
    try:
        return cls(**settings)
    except UsageError:
        raise
    except (TypeError, ValueError) as exc:  # e.g. a non-number compared in a check
        raise UsageError(f"anchor {name!r}: bad settings ({exc})") from None
