"""The labelled scenario suite of the detection-quality benchmark: healthy runs (no instability, so
every warning is a false alarm) and runs with a fault planted at a known step (a warning within
[fault_step, fault_step + window] counts as a detection).

The models are the ones users have, not stablelab's reference transformer: an MLP and a CNN on
scikit-learn's digits, MLP regressions, a causal byte LM from torch's nn.TransformerEncoder and a
Hugging Face GPT-2. One generic loop trains them all:

    for step in range(steps):
        for each of `accumulation` micro-batches:      # batch faults change the batch here
            loss = loss_fn(model(x), y)                # under autocast when settings["amp"]
            (scaler.scale(loss / accumulation) if scaler else loss / accumulation).backward()
        scaler.unscale_(optimizer)                     # GradScaler only: real gradients from here
        plant the gradient fault                       # grad_spike
        hook.observe(step, mean micro-batch loss)      # the monitor's moment
        optimizer.step() / scaler.step(optimizer); scaler.update()
        scheduler.step(); optimizer.zero_grad()

    trace = run_scenario(SCENARIOS["grad_spike_1000x"], monitor_hook, seed=0)

The modules: base.py (Scenario, Trace, NullHook), tasks.py (data, models, families), faults.py (the
planted faults), loop.py (the training loop, run_scenario); this module holds the registry of named
scenarios and re-exports the public names.
"""

from __future__ import annotations

from dataclasses import replace

from stablelab.bench.scenarios.base import FAULTS, KINDS, NullHook, Scenario, Trace
from stablelab.bench.scenarios.faults import lr_multiplier
from stablelab.bench.scenarios.loop import run_scenario, warmup_cosine
from stablelab.bench.scenarios.tasks import FAMILIES, DigitsCNN, DigitsMLP, EncoderLM, RegressionMLP, Task, _digits

__all__ = [
    "FAMILIES", "FAULTS", "KINDS", "SCENARIOS", "SPLITS", "NullHook", "Scenario", "Task", "Trace", "run_scenario",
    "suite", "calibration_variant", "twin_of",
    "lr_multiplier", "warmup_cosine", "DigitsCNN", "DigitsMLP", "EncoderLM", "RegressionMLP", "_digits",
]


def _healthy(name: str, family: str, steps: int, quick: bool, description: str, **settings) -> Scenario:
    return Scenario(name, "healthy", family, steps, quick, settings=settings, description=description)



def _fault(name: str, base: Scenario, fault: str, fault_step: int, steps: int, quick: bool, description: str,
           window: int = 20, **settings) -> Scenario:
    """A fault planted in a healthy scenario's training setup (its family, settings and lr schedule
    over the healthy run's length, so the fault lands mid-training)."""
    settings = {**base.settings, "horizon": base.steps, **settings}
    return replace(base, name=name, kind="fault", steps=steps, quick=quick, fault=fault, fault_step=fault_step,
                   window=window, settings=settings, description=description)



def _build() -> dict[str, Scenario]:
    h = [
        mlp_adamw := _healthy(
            "mlp_digits_adamw", "mlp_digits", 2000, True,
            "MLP on digits, AdamW lr 1e-3, batch 64, constant lr: reaches 100% train accuracy.",
            optimizer="adamw", lr=1e-3),
        mlp_sgd := _healthy(
            "mlp_digits_sgd_cosine", "mlp_digits", 2000, False,
            "MLP on digits, SGD momentum 0.9 lr 0.05 with CosineAnnealingLR.",
            optimizer="sgd_momentum", lr=0.05, scheduler="cosine"),
        _healthy(
            "mlp_digits_bf16", "mlp_digits", 2000, False,
            "MLP on digits, AdamW under bfloat16 autocast (float32 weights).",
            optimizer="adamw", lr=1e-3, amp="bfloat16"),
        mlp_fp16 := _healthy(
            "mlp_digits_fp16", "mlp_digits", 2000, False,
            "MLP on digits, AdamW under float16 autocast with GradScaler (the monitor sees unscaled gradients).",
            optimizer="adamw", lr=1e-3, amp="float16"),
        _healthy(
            "mlp_digits_accum4", "mlp_digits", 1500, False,
            "MLP on digits, AdamW, 4 micro-batches of 16 accumulated per step (loss / 4 each).",
            optimizer="adamw", lr=1e-3, batch=16, accumulation=4),
        cnn := _healthy(
            "cnn_digits_onecycle", "cnn_digits", 1200, True,
            "Small CNN on digits as 1x8x8 images, Adam with OneCycleLR (max lr 2e-3).",
            optimizer="adam", lr=2e-3, scheduler="onecycle"),
        reg1 := _healthy(
            "regression_1_adamw", "regression_1", 2000, True,
            "One-output MSE regression of a smooth synthetic target, AdamW lr 1e-3, batch 128.",
            optimizer="adamw", lr=1e-3, batch=128),
        reg1_sgd := _healthy(
            "regression_1_sgd_step", "regression_1", 2000, False,
            "One-output MSE regression, SGD momentum 0.9 lr 0.01 with StepLR (x0.3 every third of the run).",
            optimizer="sgd_momentum", lr=0.01, scheduler="step", batch=128),
        _healthy(
            "regression_multi_adamw", "regression_multi", 2500, False,
            "Four-output MSE regression of smooth synthetic targets, AdamW lr 1e-3 with CosineAnnealingLR.",
            optimizer="adamw", lr=1e-3, scheduler="cosine", batch=128),
        _healthy(
            "regression_multi_fp16", "regression_multi", 1500, False,
            "Four-output regression under float16 autocast with GradScaler.",
            optimizer="adamw", lr=1e-3, scheduler="cosine", batch=128, amp="float16"),
        lm := _healthy(
            "encoder_lm_warmup_cosine", "encoder_lm", 1200, True,
            "Causal byte LM from nn.TransformerEncoder (d 32, 2 layers) on argparse's source, AdamW lr 3e-3, "
            "linear warm-up + cosine through LambdaLR.",
            optimizer="adamw", lr=3e-3, scheduler="warmup_cosine", warmup=100),
        _healthy(
            "encoder_lm_bf16", "encoder_lm", 800, False,
            "The encoder LM under bfloat16 autocast.",
            optimizer="adamw", lr=3e-3, scheduler="warmup_cosine", warmup=100, amp="bfloat16"),
        _healthy(
            "encoder_lm_accum4", "encoder_lm", 800, False,
            "The encoder LM with 4 micro-batches of 4 sequences accumulated per step.",
            optimizer="adamw", lr=3e-3, scheduler="warmup_cosine", warmup=100, batch=4, accumulation=4),
        gpt2 := _healthy(
            "hf_gpt2_cosine", "hf_gpt2", 1000, True,
            "Hugging Face GPT-2 from a config (width 32, 2 layers, 2 heads, bytes), AdamW lr 3e-3 with "
            "transformers' get_cosine_schedule_with_warmup; loss from labels=.",
            optimizer="adamw", lr=3e-3, scheduler="hf_cosine", warmup=100),
        _healthy(
            "hf_gpt2_fp16", "hf_gpt2", 1000, False,
            "GPT-2 under float16 autocast with GradScaler.",
            optimizer="adamw", lr=3e-3, scheduler="hf_cosine", warmup=100, amp="float16"),
        # long converged runs (issue 21): 5,000+ steps past convergence, where a tiny gradient's
        # tenfold jump moves nothing and must not be a warning
        _healthy(
            "mlp_digits_adamw_converged", "mlp_digits", 6000, False,
            "MLP on digits, AdamW lr 1e-3, 6,000 steps: 100% train accuracy by step ~800, then 5,000+ "
            "steps at near-zero loss with tiny gradients.",
            optimizer="adamw", lr=1e-3),
        _healthy(
            "regression_1_adamw_converged", "regression_1", 6000, False,
            "One-output MSE regression, AdamW lr 1e-3 with CosineAnnealingLR over 6,000 steps: fitted by "
            "step ~1,000, then 5,000 steps at its noise floor.",
            optimizer="adamw", lr=1e-3, scheduler="cosine", batch=128),
        _healthy(
            "encoder_lm_converged", "encoder_lm", 6000, False,
            "The byte LM (AdamW lr 3e-3, warm-up + cosine) for 6,000 steps: its loss flattens by ~1,000 "
            "and stays there while the lr decays to zero.",
            optimizer="adamw", lr=3e-3, scheduler="warmup_cosine", warmup=100),
    ]
    f = [
        _fault("grad_spike_10x", mlp_sgd, "grad_spike", 200, 300, True,
               "Every gradient x10 for one step (SGD momentum: the spike stays in the momentum buffer).",
               factor=10),
        _fault("grad_spike_100x", reg1_sgd, "grad_spike", 600, 700, False,
               "Every gradient x100 for one step of SGD-momentum regression.", factor=100),
        _fault("grad_spike_1000x", mlp_sgd, "grad_spike", 200, 300, True,
               "Every gradient x1000 for one step of SGD momentum on the digits MLP.", factor=1000),
        _fault("grad_spike_1000x_adamw", mlp_adamw, "grad_spike", 200, 300, False,
               "Every gradient x1000 for one AdamW step: the second moment then damps updates for hundreds of steps.",
               factor=1000),
        _fault("grad_spike_1000x_fp16", mlp_fp16, "grad_spike", 200, 300, False,
               "Every unscaled gradient x1000 for one step under float16 autocast + GradScaler.", factor=1000),
        _fault("nan_batch", mlp_adamw, "nan_batch", 200, 260, True,
               "One NaN input element at fault_step: loss and gradients are NaN, AdamW spreads them to every weight."),
        _fault("nan_batch_fp16", mlp_fp16, "nan_batch", 200, 260, False,
               "One NaN input element under GradScaler: the scaler skips the step and halves its scale."),
        _fault("nan_batch_lm", lm, "nan_batch", 200, 260, False,
               "One NaN in the encoder LM's token-embedding output at fault_step."),
        _fault("inf_batch", cnn, "inf_batch", 200, 260, True,
               "One +inf input pixel at fault_step: inf - inf in the convolution makes the loss NaN."),
        _fault("inf_batch_gpt2", gpt2, "inf_batch", 200, 260, False,
               "One +inf in GPT-2's token-embedding output at fault_step."),
        _fault("random_labels", mlp_adamw, "random_labels", 200, 300, True,
               "One batch with uniformly random labels at fault_step (the classifier is confident by then)."),
        _fault("random_labels_cnn", cnn, "random_labels", 200, 300, False,
               "One CNN batch with random labels at fault_step."),
        _fault("shuffled_tokens", lm, "shuffled_tokens", 200, 300, True,
               "One encoder-LM batch whose target bytes are shuffled within each sequence."),
        _fault("shuffled_tokens_gpt2", gpt2, "shuffled_tokens", 200, 300, False,
               "One GPT-2 batch whose labels are shuffled within each sequence."),
        # a runaway builds over many steps: any warning until the run's end counts, and what
        # matters is the lead time before the loss doubles
        _fault("lr_runaway", mlp_adamw, "lr_runaway", 200, 450, True,
               "From fault_step on the lr compounds x1.03 per step (x1600 after 250 steps).", window=250, rate=1.03),
        _fault("lr_runaway_lm", lm, "lr_runaway", 200, 450, False,
               "The encoder LM's warm-up + cosine lr compounds x1.03 per step from fault_step on.", window=250,
               rate=1.03),
        _fault("lr_jump", reg1, "lr_jump", 400, 500, True,
               "The regression's AdamW lr becomes 100x at fault_step and stays.", factor=100),
        _fault("lr_jump_gpt2", gpt2, "lr_jump", 200, 300, False,
               "GPT-2's scheduled lr becomes 100x at fault_step and stays.", factor=100),
        _fault("logit_drift", mlp_adamw, "logit_drift", 200, 350, True,
               "From fault_step on every logit gets +0.5 per step: the loss is unchanged, log Z drifts.",
               window=120, offset_per_step=0.5),
        _fault("logit_drift_lm", lm, "logit_drift", 200, 350, False,
               "The encoder LM's logits drift by +0.5 per step from fault_step on.", window=120, offset_per_step=0.5),
        _fault("bf16_collapse", mlp_adamw, "bf16_collapse", 150, 260, True,
               "A bfloat16 MLP (weights, inputs, loss; AdamW lr 3e-4, so no sample collapses before the fault) "
               "whose logits are scaled x1.05 per step from fault_step: softmax collapses in bfloat16 while "
               "float32 still sees material non-top mass.",
               window=100, dtype="bfloat16", lr=3e-4, growth=1.05),
        _fault("attn_logit_growth", lm, "attn_logit_growth", 0, 300, True,
               "The encoder LM at a constant lr 0.1 without weight decay: without qk-layernorm the max "
               "attention logit grows past 1e3 within ~40 steps and 1e4 within ~150 (Wortsman et al. 2023, "
               "sec 3.1); nothing is planted, the whole run counts.",
               window=300, lr=0.1, scheduler=None, weight_decay=0.0,
               twin={"lr": 3e-3, "scheduler": "warmup_cosine", "warmup": 100}),
    ]
    registry = {}
    for scenario in h + f:
        if scenario.name in registry:
            raise ValueError(f"duplicate scenario name {scenario.name!r}")
        registry[scenario.name] = scenario
    return registry



SCENARIOS: dict[str, Scenario] = _build()



SPLITS = ("calibration", "heldout")
# the fault parameters that set a fault's size: the calibration split plants 0.8x of each
_SIZES = ("factor", "rate", "offset_per_step", "growth")


def calibration_variant(scenario: Scenario) -> Scenario:
    """The calibration split's instance of a scenario: a fault planted 30 steps earlier and at 0.8x
    its size (x1.024 instead of x1.03 per step for a runaway); a healthy scenario is unchanged (its
    instances differ by seed). Thresholds are tuned on these, the table reports the others."""
    if scenario.kind != "fault":
        return scenario
    settings = dict(scenario.settings)
    for key in _SIZES:
        if key in settings:
            value = settings[key]
            settings[key] = 1 + 0.8 * (value - 1) if key in ("rate", "growth") else 0.8 * value
    shift = 30 if scenario.fault_step >= 100 else 0
    return replace(scenario, fault_step=scenario.fault_step - shift, settings=settings)


def twin_of(scenario: Scenario) -> Scenario:
    """A fault scenario's healthy twin: the same run (settings, seed, steps, schedule horizon) with
    nothing planted, and for a fault that is a setting (attn_logit_growth's lr) the healthy
    setting from `settings["twin"]`. Its warnings in the fault's window are each rule's chance hits."""
    settings = {k: v for k, v in scenario.settings.items() if k != "twin"}
    settings.update(scenario.settings.get("twin", {}))
    return replace(scenario, name=scenario.name + "~twin", kind="healthy", fault=None, fault_step=None,
                   window=0, settings=settings)


def suite(quick: bool, split: str = "heldout") -> list[Scenario]:
    """The scenarios to run: the quick subset, or every scenario; in the calibration split, the
    faults' calibration instances."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    chosen = [s for s in SCENARIOS.values() if s.quick or not quick]
    return [calibration_variant(s) for s in chosen] if split == "calibration" else chosen
