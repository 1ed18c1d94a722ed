"""Megatron-LM's spiky-loss and large-grad checks: 10x the largest value seen so far."""

from __future__ import annotations

import math

from stablelab.bench.anchors.base import AnchorRule, Decision, _bad, _number, _positive_int


class MegatronRule(AnchorRule):
    """Megatron-LM's ``--check-for-spiky-loss`` and ``--check-for-large-grads``.

    Official code (NVIDIA/Megatron-LM): ``pretrain_gpt.py`` ``loss_func`` calls
    ``rerun_state_machine.validate_result(loss, is_unexpectedly_large(threshold=SPIKY_LOSS_FACTOR=10,
    context="loss"), fatal=False)``; ``megatron/core/distributed/param_and_grad_buffer.py``
    ``check_grads`` does the same for each bucket's local grad norm with ``threshold=10,
    context="grads"``. ``megatron/core/rerun_state_machine.py`` ``is_unexpectedly_large``:

    * takes ``|value|``; NaN and inf are ignored (never flagged, not counted; Megatron's separate,
      fatal ``--check-for-nan-in-loss-and-grad`` handles them, and is not part of this anchor);
    * the first ``num_samples`` (100) values only calibrate: the reference is the largest of those
      first 100 values, and it is then *frozen* (not "the largest seen so far", as sometimes said);
    * afterwards a value is flagged iff ``|value| >= 10 * max_of_first_100`` (``>=``, not ``>``).

    ``fatal=False``: a flagged step triggers the rerun machinery (or, with reruns disabled, a
    warning), never a skip/stop, so the spike checks are log-only. Both are opt-in flags
    (``store_true``); we switch them on, since without them Megatron has no spike rule to compare.

    As it runs in production: ``--check-for-nan-in-loss-and-grad`` is on by default
    (``check_nan=True`` here): a NaN or inf loss or gradient norm is fatal (``validate_result(...,
    torch.isnan / torch.isinf, fatal=True)``: the job checkpoints and exits), so it flags and stops
    the run; and ``--clip-grad`` defaults to 1.0 (megatron/training/arguments.py), which the
    benchmark's clipped run applies.

    Differences: Megatron checks the per-micro-batch *summed* token loss (``loss[0]``) and each
    bucket's local grad norm; we check the per-step loss and grad norm given (the same ratio when the
    token count per step is constant and there is one bucket). In ``--rerun-mode validate_results``
    Megatron does not validate (nor count) the very first iteration; we count every step, as with
    reruns disabled.
    """

    name = "megatron"
    action = None
    production_clip = 1.0  # megatron/training/arguments.py: --clip-grad default 1.0
    idealised = ("the spike checks (opt-in flags) are on; the per-step loss stands for Megatron's summed "
                 "micro-batch loss; a fatal NaN ends the run at once (Megatron reruns the step first)")
    # NVIDIA/Megatron-LM megatron/core/rerun_state_machine.py (RerunStateMachine.is_unexpectedly_large)
    source = ("Megatron-LM --check-for-spiky-loss / --check-for-large-grads: "
              "megatron/core/rerun_state_machine.py is_unexpectedly_large (10x max of first 100)")

    def __init__(self, threshold: float = 10.0, num_samples: int = 100, check_loss: bool = True, check_grads: bool = True,
                 check_nan: bool = True):
        self.threshold = _number(self.name, "threshold", threshold)
        self.num_samples = _positive_int(self.name, "num_samples", num_samples)
        for key, val in (("check_loss", check_loss), ("check_grads", check_grads), ("check_nan", check_nan)):
            if not isinstance(val, bool):
                raise _bad(self.name, f"{key} must be true or false, got {val!r}")
        self.check_loss = check_loss
        self.check_grads = check_grads
        self.check_nan = check_nan
        self._counts = {"loss": 0, "grads": 0}
        self._max = {"loss": 0.0, "grads": 0.0}

    def _large(self, context: str, result: float) -> bool:
        value = math.fabs(result)
        if math.isnan(value) or math.isinf(value):
            return False
        if self._counts[context] < self.num_samples:
            self._counts[context] += 1
            self._max[context] = max(self._max[context], value)
            return False
        return value >= self._max[context] * self.threshold

    def update(self, step: int, loss: float | None, grad_norm: float | None) -> Decision:
        nonfinite = [name for name, v in (("loss", loss), ("grad norm", grad_norm))
                     if v is not None and not math.isfinite(float(v))]
        if self.check_nan and nonfinite:  # --check-for-nan-in-loss-and-grad: fatal
            return Decision(True, None, f"step {step}: non-finite {' and '.join(nonfinite)} (fatal)", stop=True)
        reasons = []
        if self.check_loss and loss is not None and self._large("loss", float(loss)):
            reasons.append(f"spiky loss {float(loss):.6g} >= {self.threshold:g} x {self._max['loss']:.6g}")
        if self.check_grads and grad_norm is not None and self._large("grads", float(grad_norm)):
            reasons.append(f"large grads {float(grad_norm):.6g} >= {self.threshold:g} x {self._max['grads']:.6g}")
        if not reasons:
            return Decision(False)
        return Decision(True, None, f"step {step}: " + "; ".join(reasons))
