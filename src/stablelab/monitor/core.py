"""The Monitor: one moment where it reads gradients (after backward, before the optimizer steps),
one place where the guard decides.

    monitor = Monitor(model, optimizer, log_dir=None, policy=None)
    for x, y in loader:
        loss = loss_fn(model(x), y)
        loss.backward()
        monitor.observe(loss)   # may decide to skip, clip, roll back, stop
        optimizer.step()        # honours the guard's decision
        optimizer.zero_grad()
    monitor.close()

Cost model. Every step, on the device and without a host sync: loss, per-tensor and global
gradient norm, the per-tensor spike ratio against the optimizer's second moment, a non-finite
flag, and (through optimizer step hooks) the per-matrix update-to-weight ratio. Once per
`sync_every` steps (the "sampled" step): attention logits, output log Z and softmax collapse
(forward hooks armed for that step only), cos(grad, w) per tensor, gradient RMS against eps and
SPAM's element-wise spike fraction. Everything is read back to the host in one transfer every
`sync_every` steps, where the detectors run. Detectors whose event the policy answers with an
action that must come before the optimizer step (skip, clip, reset_moments, rollback, stop) run
every step instead, at the cost of reading 5 numbers per step (the default policy does this for
`nonfinite`)."""

from __future__ import annotations

import functools
import logging
import math
import time
import traceback
import types
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from stablelab.errors import UsageError
from stablelab.monitor import guard as guard_module
from stablelab.monitor.attention import find_attention
from stablelab.monitor.detectors import Detector, build_detectors
from stablelab.monitor.events import Event, TrainingStopped
from stablelab.monitor.guard import ORDER, Policy, Snapshot, intervention_event
from stablelab.monitor.sinks import RunStoreSink, Sink, make_sink
from stablelab.signals.logits import output_log_z_stats
from stablelab.signals.spikes import spike_fraction, tensor_spike_ratio
from stablelab.signals.weights import gradient_weight_cosine

log = logging.getLogger("stablelab.monitor")

_FAST = ("loss", "grad_norm", "spike_ratio_max", "spike_index", "nonfinite")
_EMA_BETA = 0.99  # running estimate of mean(g^2) per tensor when the optimizer keeps no v


def _optional_signal(module: str, name: str) -> Callable | None:
    """A signal another part of stablelab may provide (imported lazily; None when absent)."""
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError):
        return None


def _stack(norms: list[torch.Tensor]) -> torch.Tensor:
    """0-d tensors -> one float32 vector (norms of bf16 and fp32 tensors may be mixed)."""
    if all(n.dtype == norms[0].dtype for n in norms):
        return torch.stack(norms).float()
    return torch.stack([n.float() for n in norms])


def _inner_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer that holds the state (unwraps accelerate's AcceleratedOptimizer)."""
    inner = optimizer
    while True:  # accelerate's AcceleratedOptimizer (.optimizer), LightningOptimizer (._optimizer)
        wrapped = getattr(inner, "optimizer", None) or getattr(inner, "_optimizer", None)
        if not isinstance(wrapped, torch.optim.Optimizer) or wrapped is inner:
            return inner
        inner = wrapped


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


class _Recorder:
    """Collects a per-layer maximum from forward hooks during sampled steps."""

    def __init__(self, monitor: "Monitor", layer: int):
        self.monitor, self.layer = monitor, layer

    @property
    def active(self) -> bool:
        return self.monitor._sampling

    def __call__(self, value: torch.Tensor) -> None:
        store = self.monitor._attn_values
        previous = store.get(self.layer)
        store[self.layer] = value if previous is None else torch.maximum(previous, value)

    def error(self, error: Exception) -> None:
        self.monitor._internal_error(error)


class Monitor:
    """Stability signals, detectors and a guard for any PyTorch training loop.

    model, optimizer: what to watch (the optimizer's `step` is wrapped so it honours the guard).
    log_dir: a run-store folder (config.json, metrics.jsonl, events.jsonl; Parquet and `done` at
        close), readable by `stablelab report LOG_DIR`.
    policy: a Policy, or a dict kind -> action(s); None = skip on non-finite, warn otherwise.
    sync_every: steps between host reads (and between sampled steps).
    detectors: per-kind overrides of detector settings, or False to switch one off.
    sinks: names ("console", "tensorboard", "wandb", "mlflow") or Sink objects.
    logits_module: name of the module whose output is the logits (default: the last nn.Linear).
    attention: hook attention modules for the max attention logit per layer.
    update_ratio_every: measure the update-to-weight ratio every N steps (0: never).
    update_sample: elements per weight matrix the update ratio is estimated from (every k-th row;
        0 or a large number: every element).
    elementwise_spikes: also record SPAM's element-wise spike fraction (g^2 > 5000 v) on sampled
        steps (one more pass over every gradient and v).
    sharpness_every, sharpness_loss_fn, sharpness_batch: the scheduled edge-of-stability slot
        (stablelab.signals.curvature.sharpness_check; skipped with a log line when absent).
    config: extra fields recorded in the run's config.json."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 log_dir: str | Path | None = None, policy: Policy | dict | None = None, *,
                 sync_every: int = 10, detectors: dict[str, Any] | None = None,
                 sinks: Sequence[str | Sink] = ("console",), logits_module: str | None = None,
                 attention: bool = True, update_ratio_every: int = 1, update_sample: int = 4096,
                 elementwise_spikes: bool = False,
                 sharpness_every: int = 0, sharpness_loss_fn: Callable | None = None,
                 sharpness_batch: Any = None, config: dict[str, Any] | None = None):
        if sync_every < 1:
            raise UsageError(f"sync_every must be >= 1, got {sync_every}")
        if sharpness_every and (sharpness_loss_fn is None or sharpness_batch is None):
            raise UsageError("sharpness_every needs sharpness_loss_fn and sharpness_batch")
        self.model = model
        self.optimizer = _inner_optimizer(optimizer)
        self.policy = policy if isinstance(policy, Policy) else Policy(policy) if policy else Policy()
        self.sync_every = sync_every
        self.update_ratio_every = update_ratio_every
        self.update_sample = update_sample
        self.elementwise_spikes = elementwise_spikes
        self.sharpness_every = sharpness_every
        self.sharpness_loss_fn, self.sharpness_batch = sharpness_loss_fn, sharpness_batch
        self.detectors: list[Detector] = build_detectors(detectors)
        self.step = 0
        self.events: list[Event] = []
        self.internal_errors = 0
        self.skipped_steps: list[int] = []
        self._skipped: set[int] = set()
        self.started = time.time()

        names = {id(p): n for n, p in model.named_parameters()}
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad]
        self.params = params
        self.names = [names.get(id(p), f"param{i}") for i, p in enumerate(params)]
        self.device = params[0].device if params else torch.device("cpu")
        self.numels = torch.tensor([float(p.numel()) for p in params], device=self.device)
        self.matrices = [i for i, p in enumerate(params) if p.dim() >= 2]
        group_of = {id(p): g for g in self.optimizer.param_groups for p in g["params"]}
        self._groups = [group_of[id(p)] for p in params]
        self._g2_ema = torch.zeros(len(params), device=self.device)
        self._ema_count = 0
        self._v_mean: torch.Tensor | None = None
        self._v_scale: torch.Tensor | None = None
        self._inv_weight_norms: torch.Tensor | None = None
        self._weight_norm_step = 0

        self._immediate = {d.kind for d in self.detectors
                           if d.every_step and self.policy.acts_before_step(d.kind)}
        self._pending: list[dict[str, Any]] = []
        self._skip_next = False
        self._sampling = True  # step 0 is a sampled step
        self._attn_values: dict[int, torch.Tensor] = {}
        self._logit_stats: list[torch.Tensor] | None = None
        self._update_entry: dict[str, Any] | None = None
        self._prev_weights: list[torch.Tensor] | None = None
        self._views: list[torch.Tensor] | None = None
        self._view_pointers: list[int] = []
        self._norm_history: list[float] = []
        self._clean_since_snapshot = True
        self._closed = False
        self._collapse_fn = _optional_signal("stablelab.signals.collapse", "softmax_collapse_fraction")
        self._handles: list = []

        self.snapshot = (Snapshot(self.policy.snapshot_dir) if self.policy.uses("rollback") else None)
        self.attention_layers = find_attention(model) if attention else []
        self._recorders = [_Recorder(self, i) for i in range(len(self.attention_layers))]
        found = find_logits_module(model, logits_module)
        self.logits_module_name = found[0] if found else None
        self._logits_module = found[1] if found else None
        self._logits_handle = None

        # Sinks first: a sink that cannot start (a missing package) leaves the model untouched.
        self.sinks: list[Sink] = [make_sink(sink, log_dir) if isinstance(sink, str) else sink
                                  for sink in sinks]
        if log_dir is not None:
            self.sinks.insert(0, RunStoreSink(log_dir, {**self.describe(), **(config or {})}))

        self._arm()  # step 0 is a sampled step
        if update_ratio_every and self.matrices:
            self._handles.append(self.optimizer.register_step_pre_hook(self._before_update))
            self._handles.append(self.optimizer.register_step_post_hook(self._after_update))
        self._wrap_step()

    _inner = staticmethod(_inner_optimizer)

    # -- description ------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "kind": "monitor", "model": type(self.model).__name__,
            "optimizer": type(self.optimizer).__name__,
            "n_params": sum(p.numel() for p in self.params), "n_tensors": len(self.params),
            "sync_every": self.sync_every, "update_ratio_every": self.update_ratio_every,
            "sharpness_every": self.sharpness_every,
            "attention_layers": [layer.name for layer in self.attention_layers],
            "logits_module": self.logits_module_name,
            "policy": {k: list(v) for k, v in self.policy.actions.items()},
            "detectors": {d.kind: d.settings() for d in self.detectors},
            "every_step_detectors": sorted(self._immediate),
        }

    # -- the one moment the monitor reads gradients -------------------------------------------
    def observe(self, loss: torch.Tensor | float | None = None) -> None:
        """Call after backward, before optimizer.step(). Measures, detects, and lets the guard
        decide what the next optimizer.step() does."""
        if self._closed:
            raise RuntimeError("observe() after close()")
        try:
            self._observe(loss)
        except TrainingStopped:
            raise
        except Exception as error:  # noqa: BLE001 - a monitor must not stop training
            self._internal_error(error)
        finally:
            self.step += 1
            self._sampling = self.step % self.sync_every == 0
            self._attn_values, self._logit_stats = {}, None
            if self._sampling:  # forward hooks exist only for sampled steps' forwards
                self._arm()
            else:
                self._disarm()

    def _observe(self, loss) -> None:
        t = self.step
        if t % self.sync_every == 0 and self._pending:
            self._flush_quietly()
        entry = self._measure(t, loss)
        self._pending.append(entry)
        if self._immediate:
            self._decide_now(entry)
        if t % self.sync_every == 0:
            self._measure_sampled(entry)
            self._refresh_second_moments()
            if self.snapshot is not None:
                self._maybe_snapshot(entry)
        if self.sharpness_every and t > 0 and t % self.sharpness_every == 0:
            self._measure_sharpness(entry)
        measure_update = (self.update_ratio_every and t % self.update_ratio_every == 0
                          and not self._skip_next)
        self._update_entry = entry if measure_update else None

    @torch.no_grad()
    def _measure(self, t: int, loss) -> dict[str, Any]:
        """The every-step signals, as device tensors (about a dozen small ops, no host sync)."""
        grads = [p.grad for p in self.params]
        present = [i for i, g in enumerate(grads) if g is not None]
        if len(present) == len(grads) and grads:
            norms = _stack(torch._foreach_norm(grads, 2))
        else:
            norms = torch.zeros(len(grads), device=self.device)
            if present:
                norms[present] = _stack(torch._foreach_norm([grads[i] for i in present], 2))
        g2 = norms * norms
        global_norm = g2.sum().sqrt()  # = ||concatenation of all gradients||
        has_loss = loss is not None
        if isinstance(loss, torch.Tensor):
            loss_t = loss.detach()
            loss_t = (loss_t.mean() if loss_t.numel() != 1 else loss_t.reshape(())).float().to(self.device)
        else:
            loss_t = torch.tensor(float(loss) if has_loss else float("nan"), device=self.device)
        bad = ~torch.isfinite(global_norm + loss_t if has_loss else global_norm)
        ratio = self._spike_ratio(g2)
        if len(ratio):
            spike_max, spike_index = ratio.max(0)
        else:
            spike_max, spike_index = torch.ones((), device=self.device), torch.zeros((), device=self.device)
        fast = torch.stack([loss_t, global_norm, spike_max, spike_index.float(), bad.float()])
        lr = max((g["lr"] for g in self.optimizer.param_groups), default=float("nan"))
        return {"step": t, "fast": fast, "norms": norms, "has_loss": has_loss, "lr": float(lr),
                "done": set(), "sampled": {}, "host": {}}

    def _spike_ratio(self, g2: torch.Tensor) -> torch.Tensor:
        """Per-tensor mean(g^2) / mean(v) (SPAM's spike test g^2 > theta v, taken per tensor).

        v: the optimizer's bias-corrected second moment, its per-tensor mean refreshed on sampled
        steps (v moves slowly: by at most a factor beta2^sync_every between refreshes, nothing
        against a threshold of 1000); tensors without history get 0. Without a second moment in the
        optimizer: a running EMA of mean(g^2) kept here."""
        if self._v_scale is not None:
            return g2 * self._v_scale  # = (||g||^2 / n) / mean(v), precomputed 1 / (n mean(v))
        mean_g2 = g2 / self.numels
        if self._ema_count:
            estimate = self._g2_ema / (1 - _EMA_BETA ** self._ema_count)
            ratio = tensor_spike_ratio(g2, self.numels, estimate)
        else:
            ratio = torch.ones_like(mean_g2)
        self._g2_ema = torch.where(torch.isfinite(mean_g2),
                                   _EMA_BETA * self._g2_ema + (1 - _EMA_BETA) * mean_g2, self._g2_ema)
        self._ema_count += 1
        return ratio

    @torch.no_grad()
    def _refresh_second_moments(self) -> None:
        """mean(v) / (1 - beta2^t) per tensor from the optimizer state (None: no second moment)."""
        vs, index, steps, betas = [], [], [], []
        for i, p in enumerate(self.params):
            state = self.optimizer.state.get(p)
            v = state.get("exp_avg_sq") if state else None
            group_betas = self._groups[i].get("betas")
            if v is None or group_betas is None or "step" not in state:
                continue
            vs.append(v)
            index.append(i)
            steps.append(float(state["step"]))
            betas.append(float(group_betas[1]))
        if not vs:
            self._v_mean = self._v_scale = None
            return
        v_sum = torch.stack([v.float().sum() for v in vs]).to(self.device)
        correction = torch.tensor([1 - b ** t for b, t in zip(betas, steps)], device=self.device)
        v_mean = torch.zeros(len(self.params), device=self.device)
        v_mean[index] = v_sum / self.numels[index] / correction.clamp_min(1e-12)  # Adam bias correction
        self._v_mean = v_mean
        self._v_scale = torch.where(v_mean > 0, 1.0 / (self.numels * v_mean).clamp_min(1e-38),
                                    torch.zeros_like(v_mean))

    @torch.no_grad()
    def _measure_sampled(self, entry: dict[str, Any]) -> None:
        sampled = entry["sampled"]
        if self._attn_values:
            layers = len(self.attention_layers)
            nan = torch.tensor(float("nan"), device=self.device)
            sampled["attn"] = torch.stack([self._attn_values.get(i, nan).float().to(self.device)
                                           for i in range(layers)])
        if self._logit_stats is not None:
            sampled["logits"] = torch.stack([s.float().to(self.device) for s in self._logit_stats])
        present = [i for i, p in enumerate(self.params) if p.grad is not None]
        if present:
            cos = torch.full((len(self.params),), float("nan"), device=self.device)
            cos[present] = gradient_weight_cosine([self.params[i].grad for i in present],
                                                  [self.params[i] for i in present]).to(self.device)
            sampled["cos"] = cos
        eps = [self._groups[i].get("eps") for i in self.matrices]
        if self.matrices and all(isinstance(e, (int, float)) and e > 0 for e in eps):
            rms = entry["norms"][self.matrices] / self.numels[self.matrices].sqrt()
            ratio = rms / torch.tensor(eps, device=self.device)  # RMS(g) / eps
            sampled["eps_ratio"] = torch.where(rms > 0, ratio, torch.full_like(ratio, float("inf")))
        pairs = [(p.grad, self.optimizer.state[p]["exp_avg_sq"]) for p in self.params
                 if p.grad is not None and "exp_avg_sq" in self.optimizer.state.get(p, {})]
        if pairs and self.elementwise_spikes:
            sampled["spike_fraction"] = spike_fraction([g for g, _ in pairs], [v for _, v in pairs]
                                                       ).reshape(1).to(self.device)

    def _on_logits(self, _module, _inputs, output) -> None:
        if not (self._sampling and torch.is_grad_enabled()):
            return
        try:
            logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", output[0])
            with torch.no_grad():
                stats = list(output_log_z_stats(logits))
                if self._collapse_fn is not None:
                    stats.append(torch.as_tensor(self._collapse_fn(logits.detach(), logits.dtype),
                                                 dtype=torch.float32))
            self._logit_stats = stats
        except Exception as error:  # noqa: BLE001
            self._internal_error(error)

    def _measure_sharpness(self, entry: dict[str, Any]) -> None:
        sharpness_check = _optional_signal("stablelab.signals.curvature", "sharpness_check")
        if sharpness_check is None:
            self._log_once("sharpness", "edge_of_stability slot: stablelab.signals.curvature."
                           "sharpness_check is not available in this version; skipped")
            return
        saved = [None if p.grad is None else p.grad.clone() for p in self.params]
        batch = self.sharpness_batch() if callable(self.sharpness_batch) else self.sharpness_batch
        try:
            result = sharpness_check(self.model, self.sharpness_loss_fn, batch, entry["lr"],
                                     optimizer=self.optimizer)
        finally:
            for p, g in zip(self.params, saved):
                p.grad = g
        entry["host"].update({f"sharpness_{k}": float(v) for k, v in result.items()
                              if isinstance(v, (int, float)) and v is not None})

    def _arm(self) -> None:
        try:
            for layer, recorder in zip(self.attention_layers, self._recorders):
                layer.arm(recorder)
            if self._logits_module is not None and self._logits_handle is None:
                self._logits_handle = self._logits_module.register_forward_hook(self._on_logits)
        except Exception as error:  # noqa: BLE001
            self._internal_error(error)

    def _disarm(self) -> None:
        for layer in self.attention_layers:
            layer.disarm()
        if self._logits_handle is not None:
            self._logits_handle.remove()
            self._logits_handle = None

    # -- update-to-weight ratio, through the optimizer's own step hooks ---------------------------
    def _update_views(self) -> list[torch.Tensor]:
        """Each weight matrix as a view on every k-th row, about `update_sample` elements: the RMS
        ratio of a fixed row sample estimates the whole matrix's at a fraction of the copy cost."""
        pointers = [self.params[i].data_ptr() for i in self.matrices]
        if self._views is not None and pointers == self._view_pointers:
            return self._views
        views = []
        for i in self.matrices:
            w = self.params[i].detach()
            rows = w.reshape(w.shape[0], -1)
            sample = self.update_sample if self.update_sample > 0 else w.numel()
            stride = max(1, (w.numel() + sample - 1) // sample)
            views.append(rows[::stride] if stride < rows.shape[0] else rows[:1])
        self._views, self._view_pointers = views, pointers  # rebuilt if a parameter moves
        return views

    def _before_update(self, _optimizer, _args, _kwargs) -> None:
        if self._update_entry is None:
            return
        try:
            weights = self._update_views()
            if self._prev_weights is None:
                self._prev_weights = [w.clone() for w in weights]
            else:
                torch._foreach_copy_(self._prev_weights, weights)
        except Exception as error:  # noqa: BLE001
            self._update_entry = None
            self._internal_error(error)

    def _after_update(self, _optimizer, _args, _kwargs) -> None:
        entry, self._update_entry = self._update_entry, None
        if entry is None:
            return
        try:
            views = self._update_views()
            if self._inv_weight_norms is None or entry["step"] - self._weight_norm_step >= self.sync_every:
                # ||w|| moves slowly: refreshed once per sync window only
                self._inv_weight_norms = 1.0 / _stack(torch._foreach_norm(views, 2)).clamp_min(1e-30)
                self._weight_norm_step = entry["step"]
            torch._foreach_sub_(self._prev_weights, views)  # now w_before - w_after, in place
            # ||delta w|| / ||w|| per matrix (signals.weights.update_to_weight_ratio, in place)
            entry["update"] = _stack(torch._foreach_norm(self._prev_weights, 2)) * self._inv_weight_norms
        except Exception as error:  # noqa: BLE001
            self._internal_error(error)

    # -- host side: rows, detectors, guard -----------------------------------------------------
    def _decide_now(self, entry: dict[str, Any]) -> None:
        """Read this step's 5 fast numbers (and the previous step's update ratio, in the same read)
        and run the detectors whose action must precede the step, plus the update-ratio detector
        for the previous step, so that a learning rate gone wrong is flagged one step later."""
        previous = self._pending[-2] if len(self._pending) >= 2 else None
        update_detector = next((d for d in self.detectors if d.kind == "update_ratio"), None)
        with_update = (previous is not None and "update" in previous and update_detector is not None
                       and previous["update"].numel() > 0)
        parts = [entry["fast"]]
        if with_update:
            ratio_max, ratio_index = previous["update"].max(0)
            parts += [ratio_max.reshape(1), ratio_index.float().reshape(1)]
        values = torch.cat(parts).tolist()  # one host read per step
        host = self._host_fast(entry, values[:len(_FAST)])
        if host.get("nonfinite"):
            host["nonfinite_param"] = self._first_nonfinite(entry["norms"].tolist())
        entry["host"].update(host)
        events = []
        if with_update:
            row = {"step": previous["step"], "lr": previous["lr"], "update_ratio_max": values[-2],
                   "update_param": self.names[self.matrices[int(values[-1])]]}
            events.extend(self._check(update_detector, previous["step"], row))
            previous["done"].add("update_ratio")
        for detector in self.detectors:
            if detector.kind in self._immediate:
                events.extend(self._check(detector, entry["step"], host))
                entry["done"].add(detector.kind)
        self._note_norm(host)
        self._handle(events, entry)

    def _check(self, detector: Detector, step: int, row: dict[str, Any]) -> list[Event]:
        try:  # one broken detector must not silence the others
            return detector.check(step, row)
        except Exception as error:  # noqa: BLE001
            self._internal_error(error)
            return []

    def _host_fast(self, entry: dict[str, Any], values: list[float]) -> dict[str, Any]:
        fast = dict(zip(_FAST, values))
        host = {"step": entry["step"], "lr": entry["lr"], "grad_norm": fast["grad_norm"],
                "spike_ratio_max": fast["spike_ratio_max"],
                "spike_param": self.names[int(fast["spike_index"])] if self.params else None,
                "nonfinite": bool(fast["nonfinite"])}
        if entry["has_loss"]:
            host["loss"] = fast["loss"]
        return host

    def _first_nonfinite(self, norms: list[float]) -> str | None:
        for name, value in zip(self.names, norms):
            if not math.isfinite(value):
                return name
        return None

    def _note_norm(self, host: dict[str, Any]) -> None:
        value = host.get("grad_norm")
        if value is not None and math.isfinite(value) and not host.get("nonfinite"):
            self._norm_history.append(value)
            del self._norm_history[:-128]

    def _flush(self) -> None:
        """Read every pending step back in one transfer, run the detectors, write the rows."""
        entries, self._pending = self._pending, []
        if not entries:
            return
        parts, layout = [], []
        for entry in entries:
            for key in ("fast", "norms", "update"):
                if key in entry:
                    parts.append(entry[key].reshape(-1))
                    layout.append((entry, key, parts[-1].numel()))
            for key, tensor in entry["sampled"].items():
                parts.append(tensor.reshape(-1))
                layout.append((entry, "sampled:" + key, parts[-1].numel()))
        values = torch.cat([p.float().to(self.device) for p in parts]).tolist()  # the one host sync
        read: dict[int, dict[str, list[float]]] = {}
        offset = 0
        for entry, key, n in layout:
            read.setdefault(id(entry), {})[key] = values[offset:offset + n]
            offset += n
        rows, events = [], []
        for entry in entries:
            row = self._row(entry, read[id(entry)])
            for detector in self.detectors:
                if detector.kind not in entry["done"]:
                    events.extend(self._check(detector, entry["step"], row))
            if not entry["done"]:
                self._note_norm(row)
            row["nonfinite"] = int(row["nonfinite"])
            rows.append(row)
        for sink in self.sinks:
            sink.rows(rows)
        self._handle(events, None)

    def _row(self, entry: dict[str, Any], read: dict[str, list[float]]) -> dict[str, Any]:
        row = self._host_fast(entry, read["fast"])
        row.update(entry["host"])
        norms = read["norms"]
        if row.get("nonfinite"):
            row["nonfinite_param"] = self._first_nonfinite(norms)
        row["skipped"] = int(entry["step"] in self._skipped)
        if "update" in read:
            ratios = read["update"]
            best = max(range(len(ratios)), key=lambda j: ratios[j] if math.isfinite(ratios[j]) else math.inf)
            row["update_ratio_max"] = ratios[best]
            row["update_param"] = self.names[self.matrices[best]]
        sampled = {key[len("sampled:"):]: value for key, value in read.items() if key.startswith("sampled:")}
        if "attn" in sampled:
            attn = sampled["attn"]
            for i, value in enumerate(attn):
                row[f"attn_logit_max_l{i}"] = value
            finite = [(v, i) for i, v in enumerate(attn) if math.isfinite(v)]
            if finite:
                row["attn_logit_max"], row["attn_logit_layer"] = max(finite)
            elif attn:
                row["attn_logit_max"] = float("inf")
        if "logits" in sampled:
            row["log_z_mean"], row["log_z_max"] = sampled["logits"][:2]
            if len(sampled["logits"]) > 2:
                row["softmax_collapse_fraction"] = sampled["logits"][2]
        if "cos" in sampled:
            for name, value, g in zip(self.names, sampled["cos"], norms):
                row[f"grad_norm/{name}"] = g
                row[f"cos_grad_weight/{name}"] = value
            if "update" in read:
                for j, value in enumerate(read["update"]):
                    row[f"update_ratio/{self.names[self.matrices[j]]}"] = value
        if "eps_ratio" in sampled:
            ratios = sampled["eps_ratio"]
            j = min(range(len(ratios)), key=lambda k: ratios[k])
            if math.isfinite(ratios[j]):
                row["eps_ratio_min"], row["eps_param"] = ratios[j], self.names[self.matrices[j]]
        if "spike_fraction" in sampled:
            row["spike_fraction"] = sampled["spike_fraction"][0]
        return row

    def _handle(self, events: list[Event], entry: dict[str, Any] | None) -> None:
        """Record events and apply the policy's interventions (each one an event too)."""
        if not events:
            return
        if any(e.severity != "info" for e in events):
            self._clean_since_snapshot = False
        applied: list[Event] = []
        actions: dict[str, Event] = {}
        for event in events:
            for action in self.policy.for_kind(event.kind):
                actions.setdefault(action, event)
        stop_event = None
        for action in ORDER:
            cause = actions.get(action)
            if cause is None or action == "warn":
                continue
            if action == "stop":
                stop_event = cause
                applied.append(intervention_event("stop", cause, f"training stopped: {cause.message}"))
            elif action == "rollback":
                applied.append(self._rollback(cause))
            elif action == "skip":
                if not self._skip_next:
                    self._skip_next = True
                    applied.append(intervention_event("skip", cause, f"optimizer step {self.step} "
                                                      "skipped; weights and optimizer state unchanged"))
            elif action == "reset_moments":
                n = guard_module.reset_moments(self.optimizer)
                self._v_mean = self._v_scale = None  # no history until the next refresh
                applied.append(intervention_event("reset_moments", cause,
                                                  f"zeroed {n} moment tensors (step counts kept)"))
            elif action == "clip":
                applied.append(self._clip(cause))
            elif action == "lr_backoff":
                lrs = guard_module.lr_backoff(self.optimizer, self.policy.lr_factor)
                applied.append(intervention_event("lr_backoff", cause,
                                                  f"learning rate x{self.policy.lr_factor:g} -> {lrs}", lr=lrs))
        self._emit(events + [e for e in applied if e is not None])
        if stop_event is not None:
            self._flush_quietly()
            raise TrainingStopped(stop_event)

    def _clip(self, cause: Event) -> Event:
        total = cause.data.get("grad_norm")
        if total is None or not math.isfinite(total):
            return intervention_event("clip", cause, "not clipped: gradient norm unknown or non-finite")
        limit = self.policy.clip_norm
        if limit is None:
            limit = (sum(self._norm_history) / len(self._norm_history)) if self._norm_history else total
        grads = [p.grad for p in self.params if p.grad is not None]
        factor = guard_module.clip_gradients(grads, total, limit)
        return intervention_event("clip", cause, f"gradients scaled by {factor:.3g} "
                                  f"(norm {total:.4g} -> {min(total, limit):.4g})", factor=factor, max_norm=limit)

    def _rollback(self, cause: Event) -> Event:
        self._skip_next = True
        if self.snapshot is None or self.snapshot.step is None:
            return intervention_event("rollback", cause, "no good snapshot yet: step skipped instead")
        restored = self.snapshot.restore(self.model, self.optimizer)
        self._g2_ema.zero_()
        self._ema_count = 0
        self._refresh_second_moments()
        return intervention_event("rollback", cause, f"model and optimizer restored to the snapshot of "
                                  f"step {restored}; this step skipped, batches since then dropped",
                                  snapshot_step=restored)

    def _maybe_snapshot(self, entry: dict[str, Any]) -> None:
        """At a sampled step: save the weights as they are now (before this step's update) if the
        window since the previous sampled step raised no warning and this step's gradients are
        finite. Each sampled step starts a new window."""
        clean, self._clean_since_snapshot = self._clean_since_snapshot, True
        due = self.snapshot.step is None or entry["step"] - self.snapshot.step >= self.policy.snapshot_every
        if not due or not clean or self._skip_next:
            return
        nonfinite = entry["host"]["nonfinite"] if "nonfinite" in entry["host"] else entry["fast"][4].item()
        if nonfinite:
            return
        self.snapshot.save(self.model, self.optimizer, entry["step"])

    def _emit(self, events: list[Event]) -> None:
        self.events.extend(events)
        for sink in self.sinks:
            try:
                sink.events(events)
            except Exception as error:  # noqa: BLE001
                self._internal_error(error)

    # -- the optimizer's step honours the guard -------------------------------------------------
    def _take_skip(self) -> bool:
        skip, self._skip_next = self._skip_next, False
        if skip:
            self.skipped_steps.append(self.step - 1)
            self._skipped.add(self.step - 1)
            self._update_entry = None
        return skip

    def _wrap_step(self) -> None:
        optimizer = self.optimizer
        original = optimizer.step
        self._had_step_attr = "step" in optimizer.__dict__
        self._original_step = original
        monitor = self

        def step(_optimizer, closure=None, **kwargs):
            if monitor._closed:
                return original(closure, **kwargs) if closure is not None else original(**kwargs)
            if closure is not None:
                # Lightning runs forward, backward and our hook inside the closure: run it first,
                # then decide (the optimizer would otherwise call it itself).
                with torch.enable_grad():
                    result = closure()
                if monitor._take_skip():
                    return result
                return original(**kwargs)
            if monitor._take_skip():
                return None
            return original(**kwargs)

        functools.update_wrapper(step, getattr(original, "__func__", original))
        # A bound method, like the original: torch's LR schedulers re-wrap `step.__func__`.
        self._step_wrapper = types.MethodType(step, optimizer)
        optimizer.step = self._step_wrapper

    # -- errors, close --------------------------------------------------------------------------
    def _internal_error(self, error: BaseException) -> None:
        self.internal_errors += 1
        if self.internal_errors == 1:
            detail = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            log.error("stablelab monitor: internal error (training continues; logged once):\n%s", detail)
            warnings.warn(f"stablelab monitor: internal error, training continues: {error!r}",
                          RuntimeWarning, stacklevel=3)

    def _log_once(self, key: str, message: str) -> None:
        seen = self.__dict__.setdefault("_logged", set())
        if key not in seen:
            seen.add(key)
            log.warning(message)

    def _flush_quietly(self) -> None:
        try:
            self._flush()
        except TrainingStopped:
            raise
        except Exception as error:  # noqa: BLE001
            self._internal_error(error)

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for event in self.events:
            counts[event.kind] = counts.get(event.kind, 0) + 1
        return {"steps": self.step, "events": counts, "skipped_steps": len(self.skipped_steps),
                "internal_errors": self.internal_errors, "wall_s": time.time() - self.started,
                "diverged": any(e.kind == "nonfinite" for e in self.events)}

    def close(self) -> dict[str, Any]:
        """Flush what is pending, seal the run store, remove hooks, restore optimizer.step."""
        if self._closed:
            return self.summary()
        try:
            self._flush_quietly()
        except TrainingStopped:  # training is over anyway; the event is recorded
            pass
        self._closed = True
        self._disarm()
        for handle in self._handles:
            handle.remove()
        if self.optimizer.__dict__.get("step") is self._step_wrapper:
            if self._had_step_attr:
                self.optimizer.step = self._original_step
            else:
                del self.optimizer.step
        summary = self.summary()
        for sink in self.sinks:
            try:
                sink.close(summary)
            except Exception as error:  # noqa: BLE001
                self._internal_error(error)
        return summary

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
