"""Device-side measurement: runs the registered signals (monitor.signal_registry,
monitor.builtin_signals) on their schedule into a `StepRecord`, as tensors on the parameters'
device, with no host sync.

Holds what the signals read: the parameters in optimizer order, the step numbers' state
(monitor.step_numbers), the forward hooks' values (attention maxima, output-logit statistics: the
hooks stay armed and record on sampled steps only), and the weight sample the update ratio is
measured on through the optimizer's own step hook."""

from __future__ import annotations

import logging
import warnings
from collections import deque
from typing import Any, Callable

import torch
from torch import nn

from stablelab.errors import UsageError
import stablelab.monitor.builtin_signals  # noqa: F401 (registers the built-in signals)
from stablelab.monitor.attention import find_attention, unrecognised_attention
from stablelab.monitor.model_info import TASKS, decide_task, find_logits_module, infer_task, loss_dtype, task_from_head  # noqa: F401 (re-exported)
from stablelab.monitor.signal_registry import StepRecord, signals_for
from stablelab.monitor.step_numbers import FAST, TrustRule, step_numbers
from stablelab.signals.collapse import logit_statistics
from stablelab.signals.weights import tensor_norms, update_to_weight_ratio

NONFINITE, OUTLIER = FAST.index("nonfinite"), FAST.index("outlier")

EARLY_STEPS = 50  # the update ratio reads the current ||w|| on every one of the first steps


def _say(message: str) -> None:
    """A one-line notice about what the monitor cannot see (a warning, and the log)."""
    logging.getLogger("stablelab.monitor").warning(message)
    warnings.warn(message, UserWarning, stacklevel=4)


class _Recorder:
    """Collects a per-layer maximum from forward hooks during sampled steps."""

    def __init__(self, measurer: "Measurer", layer: int):
        self.measurer, self.layer = measurer, layer

    @property
    def active(self) -> bool:
        return self.measurer.sampling

    @property
    def queries(self) -> int:
        return self.measurer.signal_rows

    def __call__(self, value: torch.Tensor) -> None:
        store = self.measurer.attn_values
        previous = store.get(self.layer)
        store[self.layer] = value if previous is None else torch.maximum(previous, value)

    def error(self, error: Exception) -> None:
        self.measurer.on_error(error)


class Measurer:
    """Holds the device-side state of the monitor's signals and measures one step's record."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, on_error: Callable,
                 attention: bool, logits_module: str | None | bool, task: str, update_sample: int,
                 elementwise_spikes: bool, outlier_factor: float, outlier_warmup: int,
                 collapse_mass_floor: float, loss_dtype_override: torch.dtype | None,
                 numbers_on: str = "auto", signal_rows: int = 0, trust: TrustRule = TrustRule()):
        if task not in TASKS:
            raise UsageError(f"task must be one of {TASKS}, got {task!r}")
        if not (isinstance(outlier_factor, (int, float)) and outlier_factor > 1):
            raise UsageError(f"outlier_factor must be a number > 1, got {outlier_factor!r}")
        self.model, self.optimizer, self.on_error = model, optimizer, on_error
        self.update_sample, self.elementwise_spikes = update_sample, elementwise_spikes
        self.collapse_mass_floor = collapse_mass_floor
        if not isinstance(signal_rows, int) or signal_rows < 0:
            raise UsageError(f"signal_rows must be an integer >= 0, got {signal_rows!r}")
        self.signal_rows = signal_rows
        self.loss_dtype_override = loss_dtype_override
        self.task = task if task != "auto" else None
        self._task_inferred = task != "auto"
        self.task_reason = f"given: task={task!r}" if task != "auto" else "undecided: no step observed yet"

        names = {id(p): n for n, p in model.named_parameters()}
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        self.params = params
        self.names = [names.get(id(p), f"param{i}") for i, p in enumerate(params)]
        self.device = params[0].device if params else torch.device("cpu")
        self.numels = torch.tensor([float(p.numel()) for p in params], device=self.device)
        self.matrices = [i for i, p in enumerate(params) if p.dim() >= 2]
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self.groups = [group_of[id(p)] for p in params]
        self.numbers = step_numbers([p.numel() for p in params], self.device, outlier_factor, outlier_warmup,
                                    where=numbers_on, trust=trust)
        self._weight_norms: torch.Tensor | None = None
        self._weight_norm_step = 0
        self._flat: list[torch.Tensor] = []
        self._slices: list[list[torch.Tensor]] = []
        self._sizes: list[int] = []
        self._views: list[torch.Tensor] | None = None
        self._view_pointers: list[int] = []
        self.update_record: StepRecord | None = None  # the step whose update the step hook measures
        self.current_loss: Any = None  # the loss, while the every-step signals run
        self.sample_after = True       # sample the weights after this step (the next one is measured)
        self._have_previous = False
        self._sharpness_warm: dict[str, Any] = {}  # Lanczos start vectors kept between scheduled checks
        self.norm_history: deque[float] = deque(maxlen=128)

        self.sampling = True  # step 0 is a sampled step
        self.attn_values: dict[int, torch.Tensor] = {}
        self.logit_stats: torch.Tensor | None = None
        self.attention_layers = find_attention(model) if attention else []
        unseen = unrecognised_attention(model, self.attention_layers) if attention else []
        if unseen:
            _say(f"stablelab monitor: {len(unseen)} attention-like module(s) not recognised ({unseen[0]}"
                 f"{', ...' if len(unseen) > 1 else ''}): no attention-logit signals for them; describe the "
                 "class with stablelab.monitor.register_attention(Cls, qkv=... or q=..., k=..., n_heads=...)")
        self._silent_hooks_said = False
        self._recorders = [_Recorder(self, i) for i in range(len(self.attention_layers))]
        found = None if logits_module is False else find_logits_module(model, logits_module or None)
        self.logits_module_name = found[0] if found else None
        self._logits_module = found[1] if found else None
        self._logits_handle = None
        self._head_verdict = task_from_head(model, self._logits_module)  # once: it walks the model
        # the signals registered when the monitor is built, by schedule (looked up once, not per step)
        self._every_step, self._sampled = signals_for("every_step"), signals_for("sampled")
        self._armed = False

    # -- every step ------------------------------------------------------------------------
    @torch.no_grad()
    def measure(self, t: int, loss, lr: float) -> StepRecord:
        """A new step's record with its every-step signals (the gradient norms, then the step numbers
        from them: on the device with no host sync, or in Python floats on the CPU)."""
        self.see_loss(loss)
        record = StepRecord(step=t, lr=float(lr), has_loss=loss is not None, sampled=self.sampling)
        self.current_loss = loss
        try:
            for signal in self._every_step:
                record.values[signal.name] = signal.measure(self, record)
        finally:
            self.current_loss = None  # the record keeps no reference to the loss's graph
        return record

    def see_loss(self, loss: Any) -> None:
        """Decide the task from a loss (its autograd graph, else the output head) unless decided:
        integrations call it with the loss before they detach it for observe()."""
        if not self._task_inferred:
            self.task, self.task_reason = decide_task(loss, self._head_verdict)
            self._task_inferred = self.task is not None

    @torch.no_grad()
    def drop_gradients(self, record: StepRecord) -> None:
        """The device-side skip: zero every gradient when this step is non-finite or an outlier,
        without reading the flag on the host (masked_fill_ also clears NaN and inf)."""
        record.device_skip = True
        mask = (record.fast[NONFINITE] + record.fast[OUTLIER]) > 0
        for p in self.params:
            if p.grad is not None:
                p.grad.masked_fill_(mask, 0)

    @torch.no_grad()
    def refresh_second_moments(self) -> None:
        """mean(v) / (1 - beta2^t) per tensor from the optimizer state (None: no second moment)."""
        vs, index, steps, betas = [], [], [], []
        for i, p in enumerate(self.params):
            state = self.optimizer.state.get(p)
            v = state.get("exp_avg_sq") if state else None
            group_betas = self.groups[i].get("betas")
            if v is None or group_betas is None or "step" not in state:
                continue
            vs.append(v)
            index.append(i)
            steps.append(float(state["step"]))
            betas.append(float(group_betas[1]))
        if not vs:
            self.numbers.set_second_moments(None)
            return
        v_sum = torch.stack([v.float().sum() for v in vs]).to(self.device)
        correction = torch.tensor([1 - b ** t for b, t in zip(betas, steps)], device=self.device)
        v_mean = torch.zeros(len(self.params), device=self.device)
        v_mean[index] = v_sum / self.numels[index] / correction.clamp_min(1e-12)  # Adam bias correction
        self.numbers.set_second_moments(v_mean)

    def reset_history(self) -> None:
        """Forget the running estimates (after a rollback or a moment reset)."""
        self.numbers.reset()
        self.forget_weights()

    # -- sampled steps -----------------------------------------------------------------------
    def _check_hooks_fired(self) -> None:
        """Say once when a sampled step's forward ran none of the hooks the monitor armed."""
        missing = []
        if self.attention_layers and not self.attn_values:
            missing.append("attention logits")
        if self._logits_module is not None and self.logit_stats is None and self.task == "classification":
            missing.append("output log Z and softmax collapse")
        if missing and not self._silent_hooks_said:
            self._silent_hooks_said = True
            _say(f"stablelab monitor: no {' or '.join(missing)} on sampled steps: the forward ran none of "
                 "the monitor's hooks (a model torch.compile'd and run before the Monitor was created, "
                 "or a forward under no_grad); create the Monitor before the first forward")

    @torch.no_grad()
    def measure_sampled(self, record: StepRecord) -> None:
        """The sampled signals of this step (a signal with nothing to read returns None)."""
        self._check_hooks_fired()
        for signal in self._sampled:
            value = signal.measure(self, record)
            if value is not None:
                record.values[signal.name] = value

    def measure_sharpness(self, record: StepRecord, loss_fn: Callable, batch: Any,
                          options: dict[str, Any] | None = None) -> None:
        """The scheduled edge-of-stability slot: sharpness against the stability edge at this lr,
        with the training gradients put back afterwards. batch: a batch or a function returning one;
        options: keyword arguments of `sharpness_check` (tol, trace_products, ...). Lanczos starts
        from the previous check's eigenvectors."""
        from stablelab.signals.curvature import sharpness_check

        saved = [None if p.grad is None else p.grad.clone() for p in self.params]
        batch = batch() if callable(batch) else batch
        try:
            result = sharpness_check(self.model, loss_fn, batch, record.lr, optimizer=self.optimizer,
                                     warm_start=self._sharpness_warm, **(options or {}))
        finally:
            for p, g in zip(self.params, saved):
                p.grad = g
        record.host.update({f"sharpness_{k}": float(v) for k, v in result.items()
                              if isinstance(v, (int, float)) and v is not None})

    def _on_logits(self, _module, _inputs, output) -> None:
        if not (self.sampling and torch.is_grad_enabled()):
            return
        try:
            logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", output[0])
            if logits.shape[-1] < 2:  # a softmax over one output is not a classifier
                return
            dtype = self.loss_dtype_override or loss_dtype(logits)
            rows = logits.reshape(-1, logits.shape[-1])
            if self.signal_rows and len(rows) > self.signal_rows:  # an evenly strided sample of the rows
                rows = rows[:: -(-len(rows) // self.signal_rows)]
            stats = logit_statistics(rows, dtype, self.collapse_mass_floor)
            self.logit_stats = stats
        except Exception as error:  # noqa: BLE001
            self.on_error(error)

    def arm(self) -> None:
        try:
            for layer, recorder in zip(self.attention_layers, self._recorders):
                layer.arm(recorder)
            if self._logits_module is not None and self._logits_handle is None:
                self._logits_handle = self._logits_module.register_forward_hook(self._on_logits)
            self._armed = True
        except Exception as error:  # noqa: BLE001
            self.on_error(error)

    def disarm(self) -> None:
        self._armed = False
        for layer in self.attention_layers:
            layer.disarm()
        if self._logits_handle is not None:
            self._logits_handle.remove()
            self._logits_handle = None

    def next_step(self, sampling: bool) -> None:
        """The hooks stay armed from the first step to close() and do nothing off sampled steps:
        hooks added or removed after torch.compile traced the model would not be seen (or would
        force a recompile), while a flag read in the hook is one guard with two cached graphs."""
        self.sampling = sampling
        self.attn_values, self.logit_stats = {}, None
        if not self._armed:
            self.arm()

    # -- update-to-weight ratio, through the optimizer's own step hook ----------------------------
    def _update_views(self) -> tuple[list[torch.Tensor], bool]:
        """Each weight matrix as a view on every k-th row, about `update_sample` elements: the RMS
        ratio of a fixed row sample estimates the whole matrix's at a fraction of the copy cost.
        Two flat float32 buffers (the previous step's sample, this step's) whose
        slices take each view's shape. Returns (views, rebuilt)."""
        pointers = [self.params[i].data_ptr() for i in self.matrices]
        if self._views is not None and pointers == self._view_pointers:
            return self._views, False
        views = []
        for i in self.matrices:
            w = self.params[i].detach()
            rows = w.reshape(w.shape[0], -1)
            sample = self.update_sample if self.update_sample > 0 else w.numel()
            stride = max(1, (w.numel() + sample - 1) // sample)
            views.append(rows[::stride] if stride < rows.shape[0] else rows[:1])
        self._views, self._view_pointers = views, pointers  # rebuilt if a parameter moves
        sizes = self._sizes = [v.numel() for v in views]
        self._flat = [torch.empty(sum(sizes), device=self.device) for _ in range(2)]
        self._slices = [[part.view(v.shape) for part, v in zip(flat.split(sizes), views)] for flat in self._flat]
        return views, True

    def forget_weights(self) -> None:
        """The weights changed outside an optimizer step (a rollback): the stored sample is no
        longer this step's "before"."""
        self._have_previous = False

    @torch.no_grad()
    def sample_weights_now(self) -> None:
        """Take the weights as they are now as the next step's "before" (after a resume, where
        the previous step's update ran in another process)."""
        if not self.matrices:
            return
        try:
            views, _ = self._update_views()
            torch._foreach_copy_(self._slices[0], views)
            self._have_previous = True
        except Exception as error:  # noqa: BLE001
            self._have_previous = False
            self.on_error(error)

    def after_update(self, _optimizer, _args, _kwargs) -> None:
        """After each optimizer step: sample the weights (when this step or the next is measured).
        The sample after step t-1 is the "before" of step t: weights change only in optimizer
        steps (a skipped step calls no hook and changes nothing; a rollback calls
        `forget_weights`), so one copy per step gives ||w_t - w_{t-1}|| / ||w_t||."""
        record, self.update_record = self.update_record, None
        if record is None and not self.sample_after:
            self._have_previous = False
            return
        try:
            views, rebuilt = self._update_views()
            torch._foreach_copy_(self._slices[1], views)
            if record is not None and self._have_previous and not rebuilt:
                if (self._weight_norms is None or record.step < EARLY_STEPS
                        or record.step - self._weight_norm_step >= 10):
                    # ||w|| moves slowly once training settles: every 10 steps after the first steps
                    self._weight_norms = tensor_norms(self._slices[1])
                    self._weight_norm_step = record.step
                record.values["update_ratio"] = update_to_weight_ratio(
                    self._flat[0], self._flat[1], weight_norms=self._weight_norms, sizes=self._sizes)
            # this step's sample is the next step's "before"
            self._flat.reverse()
            self._slices.reverse()
            self._have_previous = True
        except Exception as error:  # noqa: BLE001
            self._have_previous = False
            self.on_error(error)
