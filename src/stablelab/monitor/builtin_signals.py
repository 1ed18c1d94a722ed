"""The monitor's built-in signals, each one `register_signal(Signal(...))`: when it is measured, the
`stablelab.signals` function that measures it, and the columns it writes (monitor.signal_registry).
Registration order is column order in a row."""

from __future__ import annotations

import math
from typing import Any

import torch

from stablelab.monitor.signal_registry import Column, Signal, StepRecord, register_signal
from stablelab.monitor.step_numbers import FAST
from stablelab.signals.spikes import spike_fraction
from stablelab.signals.weights import eps_ratio, gradient_rms, gradient_weight_cosine, tensor_norms


def _largest(values: list[float]) -> int:
    """Index of the largest value (NaN counts as largest: a broken tensor is the one to name)."""
    return max(range(len(values)), key=lambda j: values[j] if values[j] == values[j] else math.inf)


# -- every step ------------------------------------------------------------------------------------
def _gradient_norms(m: Any, record: StepRecord) -> torch.Tensor:
    grads = [p.grad for p in m.params]
    present = [i for i, g in enumerate(grads) if g is not None]
    if len(present) == len(grads) and grads:
        return tensor_norms(grads)
    norms = torch.zeros(len(grads), device=m.device)
    if present:
        norms[present] = tensor_norms([grads[i] for i in present])
    return norms


def _per_tensor_norms_row(read: dict, record: StepRecord, m: Any) -> dict[str, Any]:
    if not record.sampled:  # one column per tensor: on sampled steps only
        return {}
    return {f"grad_norm/{name}": g for name, g in zip(m.names, read["gradient_norms"])}


register_signal(Signal(
    "gradient_norms", "every_step",
    (Column("grad_norm/", "gradient norm per tensor", sampled=True),),
    to_row=_per_tensor_norms_row, measure=_gradient_norms, source="per-tensor ||g||, one foreach norm"))


def _step_numbers(m: Any, record: StepRecord) -> Any:
    return m.numbers.step(record.norms, m.current_loss)


def _step_numbers_row(read: dict, record: StepRecord, m: Any) -> dict[str, Any]:
    fast = dict(zip(FAST, read["step_numbers"]))
    row = {"grad_norm": fast["grad_norm"], "grad_norm_typical": fast["grad_norm_typical"],
           "grad_norm_ratio_min": fast["grad_norm_ratio_min"], "spike_ratio_max": fast["spike_ratio_max"],
           "spike_param": m.names[int(fast["spike_index"])] if m.names else None,
           "nonfinite": bool(fast["nonfinite"]), "outlier": bool(fast["outlier"]), "trusted": int(fast["trusted"])}
    if record.has_loss:
        row["loss"] = fast["loss"]
    if row["nonfinite"] and "gradient_norms" in read:
        row["nonfinite_param"] = next((name for name, g in zip(m.names, read["gradient_norms"])
                                       if not math.isfinite(g)), None)
    return row


register_signal(Signal(
    "step_numbers", "every_step",
    (Column("loss", "training loss passed to observe()"),
     Column("grad_norm", "global gradient norm (before clipping)", log_scale=True),
     Column("grad_norm_typical", "running typical gradient norm (EMA of log norm, on the device)", log_scale=True),
     Column("grad_norm_ratio_min", "min over tensors of ||g_i|| / its typical value: every tensor's gradient "
            "grew at least this much at once", log_scale=True),
     Column("spike_ratio_max", "max over tensors of mean(g^2) / mean(v) (SPAM's ratio, per tensor)",
            log_scale=True),
     Column("spike_param", "tensor with the largest spike ratio"),
     Column("nonfinite", "1 if the loss or a gradient was NaN or infinite"),
     Column("nonfinite_param", "first tensor (model order) with a non-finite gradient"),
     Column("outlier", "1 if the device-side rule judged the gradient an extreme outlier"),
     Column("trusted", "1 if this step's norms entered the typical norms (not flagged, not non-finite)")),
    to_row=_step_numbers_row, measure=_step_numbers,
    source="monitor.step_numbers: SPAM's g^2 / v per tensor (signals.spikes.tensor_spike_ratio); "
           "the skip rule against a typical norm (OLMo-core, ZClip)"))


# -- after the optimizer's update -------------------------------------------------------------------
def _update_ratio_row(read: dict, record: StepRecord, m: Any) -> dict[str, Any]:
    ratios = read["update_ratio"]
    if not ratios:
        return {}
    best = _largest(ratios)
    row = {"update_ratio_max": ratios[best], "update_param": m.names[m.matrices[best]]}
    if record.sampled:
        row.update({f"update_ratio/{m.names[m.matrices[j]]}": r for j, r in enumerate(ratios)})
    return row


register_signal(Signal(
    "update_ratio", "after_update",
    (Column("update_ratio_max", "max over weight matrices of ||delta w|| / ||w||", log_scale=True),
     Column("update_param", "matrix with the largest update ratio"),
     Column("update_ratio/", "update-to-weight ratio per matrix", sampled=True)),
    to_row=_update_ratio_row,  # measured in Measurer.after_update (signals.weights.update_to_weight_ratio)
    source="Karpathy's update:data ratio"))


# -- sampled steps -----------------------------------------------------------------------------------
def _attention(m: Any, record: StepRecord) -> torch.Tensor | None:
    if not m.attn_values:
        return None
    nan = torch.tensor(float("nan"), device=m.device)
    return torch.stack([m.attn_values.get(i, nan).float().to(m.device) for i in range(len(m.attention_layers))])


def _attention_row(read: dict, record: StepRecord, m: Any) -> dict[str, Any]:
    attn = read["attention_logits"]
    row: dict[str, Any] = {f"attn_logit_max_l{i}": value for i, value in enumerate(attn)}
    finite = [(v, i) for i, v in enumerate(attn) if math.isfinite(v)]
    if finite:
        row["attn_logit_max"], row["attn_logit_layer"] = max(finite)
    elif attn:
        row["attn_logit_max"] = float("inf")
    return row


register_signal(Signal(
    "attention_logits", "sampled",
    (Column("attn_logit_max", "max attention logit over layers", sampled=True, log_scale=True),
     Column("attn_logit_layer", "layer holding the max attention logit", sampled=True),
     Column("attn_logit_max_l", "max attention logit per layer", sampled=True, log_scale=True)),
    to_row=_attention_row, measure=_attention,  # hooks: signals.attention.attention_logit_max_fast
    source="Dehghani et al. 2023; Wortsman et al. 2023, section 3.1"))


def _output_logits(m: Any, record: StepRecord) -> torch.Tensor | None:
    if m.logit_stats is None or m.task != "classification":  # undecided or regression: off
        return None
    return m.logit_stats.to(m.device)


def _output_logits_row(read: dict, record: StepRecord, m: Any) -> dict[str, Any]:
    values = read["output_logits"]
    return {"log_z_mean": values[0], "log_z_max": values[1], "softmax_collapse_fraction": values[2],
            "softmax_collapse_lost_fraction": values[3]}


register_signal(Signal(
    "output_logits", "sampled",
    (Column("log_z_mean", "output log Z (logsumexp of the logits), mean over positions", sampled=True),
     Column("log_z_max", "output max |log Z|", sampled=True),
     Column("softmax_collapse_fraction", "fraction of samples whose softmax sums to exactly 1 in the "
            "loss's dtype (Prieto et al. 2025)", sampled=True),
     Column("softmax_collapse_lost_fraction", "fraction of samples collapsed in the loss's dtype whose "
            "float32 non-top probability mass is material (training signal lost to precision)", sampled=True)),
    to_row=_output_logits_row, measure=_output_logits,  # hook: signals.collapse.logit_statistics
    source="Wortsman et al. 2023, section 3.2; Prieto et al. 2025"))


def _cosine(m: Any, record: StepRecord) -> torch.Tensor | None:
    present = [i for i, p in enumerate(m.params) if p.grad is not None]
    if not present:
        return None
    cos = torch.full((len(m.params),), float("nan"), device=m.device)
    cos[present] = gradient_weight_cosine([m.params[i].grad for i in present], [m.params[i] for i in present],
                                          record.norms[present]).to(m.device)
    return cos


register_signal(Signal(
    "grad_weight_cosine", "sampled",
    (Column("cos_grad_weight/", "cos(grad, w) per tensor (NLM direction)", sampled=True),),
    to_row=lambda read, record, m: {f"cos_grad_weight/{name}": value
                                    for name, value in zip(m.names, read["grad_weight_cosine"])},
    measure=_cosine, source="Prieto et al. 2025 (naive loss minimisation)"))


def _eps_ratio(m: Any, record: StepRecord) -> torch.Tensor | None:
    eps = [m.groups[i].get("eps") for i in m.matrices]
    if not m.matrices or not all(isinstance(e, (int, float)) and e > 0 for e in eps):
        return None
    rms = gradient_rms(record.norms[m.matrices], m.numels[m.matrices])
    ratio = eps_ratio(rms, torch.tensor(eps, device=m.device))
    return torch.where(rms > 0, ratio, torch.full_like(ratio, float("inf")))  # no gradient: never damped


def _eps_ratio_row(read: dict, record: StepRecord, m: Any) -> dict[str, Any]:
    ratios = read["eps_ratio"]
    j = min(range(len(ratios)), key=lambda k: ratios[k])
    return {"eps_ratio_min": ratios[j], "eps_param": m.names[m.matrices[j]]} if math.isfinite(ratios[j]) else {}


register_signal(Signal(
    "eps_ratio", "sampled",
    (Column("eps_ratio_min", "min over weight matrices of RMS(g) / AdamW eps", sampled=True, log_scale=True),
     Column("eps_param", "matrix with the smallest RMS(g) / eps", sampled=True)),
    to_row=_eps_ratio_row, measure=_eps_ratio, source="Wortsman et al. 2023, section 3.4"))


def _spike_fraction(m: Any, record: StepRecord) -> torch.Tensor | None:
    if not m.elementwise_spikes:
        return None
    pairs = [(p.grad, m.optimizer.state[p]["exp_avg_sq"]) for p in m.params
             if p.grad is not None and "exp_avg_sq" in m.optimizer.state.get(p, {})]
    if not pairs:
        return None
    return spike_fraction([g for g, _ in pairs], [v for _, v in pairs]).reshape(1).to(m.device)


register_signal(Signal(
    "spike_fraction", "sampled",
    (Column("spike_fraction", "fraction of elements with g^2 > 5000 v (SPAM)", sampled=True),),
    to_row=lambda read, record, m: {"spike_fraction": read["spike_fraction"][0]},
    measure=_spike_fraction, source="SPAM, Huang et al. 2025"))


# -- scheduled checks (monitor.scheduled measures them on a batch of their own) ------------------------
register_signal(Signal(
    "sharpness", "scheduled",
    (Column("sharpness_", "the scheduled sharpness check's numbers (signals.curvature.sharpness_check): "
            "lambda_max, trace, gd_threshold = 2/lr, sharpness_ratio, adam_ratio, ...", sampled=True),),
    source="Cohen et al. 2021 (edge of stability); Cohen et al. 2022 (adaptive)"))

register_signal(Signal(
    "opposing_signals", "scheduled",
    (Column("opposing_signals_correlation", "cosine of the two opposing groups' mean loss-change series (near -1: opposing)", sampled=True),
     Column("opposing_signals_amplitude", "mean |loss change| of the most-moving probe examples over that of all", sampled=True),
     Column("opposing_signals_oscillation", "fraction of the first group's consecutive loss changes that flip sign", sampled=True),
     Column("opposing_signals_group_sizes", "sizes of the two opposing groups", sampled=True)),
    source="Rosenfeld & Risteski 2023"))
