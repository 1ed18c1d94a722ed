"""Pure metric functions over tensors. Hooks and schedules only decide when to call them."""

from stablelab.signals.attention import attention_logit_max, attention_logits
from stablelab.signals.gradients import global_norm, rms, update_rms
from stablelab.signals.logits import output_log_z, output_log_z_stats, z_loss
from stablelab.signals.collapse import (
    cosine_similarity, logit_statistics, nlm_alignment, softmax_collapse_fraction,
    softmax_collapse_lost_fraction, softmax_collapse_mask, zero_loss_fraction,
)

__all__ = [
    "attention_logit_max", "attention_logits", "global_norm", "rms", "update_rms",
    "output_log_z", "output_log_z_stats", "z_loss",
]
__all__ += [
    "cosine_similarity", "nlm_alignment", "softmax_collapse_fraction", "softmax_collapse_lost_fraction",
    "softmax_collapse_mask", "logit_statistics",
    "zero_loss_fraction",
]
from stablelab.signals.binary import estimating_error, gradient_stability, power_estimator

__all__ += ["estimating_error", "gradient_stability", "power_estimator"]
from stablelab.signals.opposing import opposing_groups, per_example_losses

__all__ += ["opposing_groups", "per_example_losses"]
