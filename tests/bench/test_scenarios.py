"""The benchmark's scenario suite: every family trains, every planted fault is what it says, and
the loop honours the hook's contract (real gradients, after the fault, before the step)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from stablelab.bench.scenarios import FAMILIES, FAULTS, SCENARIOS, NullHook, run_scenario, suite


def short(name: str, steps: int, fault_step: int | None = None, **settings):
    """A registry scenario cut to `steps` (and its fault moved to `fault_step`)."""
    scenario = SCENARIOS[name]
    changes = {"steps": steps, "settings": {**scenario.settings, **settings}}
    if fault_step is not None:
        changes["fault_step"] = fault_step
    return dataclasses.replace(scenario, **changes)


def healthy_twin(scenario):
    """The same run with nothing planted."""
    return dataclasses.replace(scenario, kind="healthy", fault=None, fault_step=None)


class Recorder(NullHook):
    """Global gradient norm and observed loss at every observe; keeps the model."""

    def __init__(self):
        self.norms, self.losses, self.closed, self.model = {}, {}, 0, None

    def attach(self, model, optimizer, task="auto"):
        self.model, self.optimizer = model, optimizer

    def observe(self, step, loss):
        grads = [p.grad.detach().float() for p in self.model.parameters() if p.grad is not None]
        self.norms[step] = torch.sqrt(sum((g * g).sum() for g in grads)).item()
        self.losses[step] = float(loss)

    def close(self):
        self.closed += 1


def first_healthy(family: str) -> str:
    return next(s.name for s in SCENARIOS.values() if s.family == family and s.kind == "healthy")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_a_few_steps(family):
    trace = run_scenario(short(first_healthy(family), 6), NullHook())
    assert len(trace.losses) == len(trace.lrs) == 6
    assert all(math.isfinite(v) for v in trace.losses)
    assert list(trace.probe_losses) == [5] and math.isfinite(trace.probe_losses[5])
    assert not trace.diverged and trace.stopped_at is None


@pytest.mark.parametrize("name", ["mlp_digits_bf16", "mlp_digits_fp16", "encoder_lm_bf16", "bf16_collapse"])
def test_precision_variants_train(name):
    trace = run_scenario(short(name, 4, fault_step=2) if SCENARIOS[name].fault else short(name, 4), NullHook())
    assert all(math.isfinite(v) for v in trace.losses)


def test_runs_are_deterministic_and_restore_threads():
    torch.set_num_threads(2)
    a = run_scenario(short("mlp_digits_adamw", 10), NullHook())
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert a.losses == run_scenario(short("mlp_digits_adamw", 10), NullHook()).losses
    assert a.losses != run_scenario(short("mlp_digits_adamw", 10), NullHook(), seed=1).losses


def test_mlp_digits_reaches_full_train_accuracy():
    from stablelab.bench.scenarios import _digits

    hook = Recorder()
    trace = run_scenario(SCENARIOS["mlp_digits_adamw"], hook)
    x, y, _, _ = _digits()
    with torch.no_grad():
        accuracy = (hook.model(x).argmax(-1) == y).float().mean().item()
    assert accuracy == 1.0 and trace.losses[-1] < 0.01


@pytest.mark.parametrize("name", ["grad_spike_1000x", "grad_spike_1000x_fp16", "grad_spike_10x"])
def test_observe_sees_the_planted_gradient_spike(name):
    scenario = short(name, 22, fault_step=20)
    factor = scenario.settings["factor"]
    spiked, clean = Recorder(), Recorder()
    run_scenario(scenario, spiked)
    run_scenario(healthy_twin(scenario), clean)
    assert spiked.norms[19] == clean.norms[19]  # nothing planted before fault_step
    assert spiked.norms[20] == pytest.approx(factor * clean.norms[20], rel=1e-4)
    assert factor / 3 < spiked.norms[20] / spiked.norms[19] < factor * 3


@pytest.mark.parametrize("name", ["nan_batch", "nan_batch_lm", "inf_batch", "inf_batch_gpt2"])
def test_non_finite_batch_poisons_exactly_fault_step(name):
    hook = Recorder()
    trace = run_scenario(short(name, 8, fault_step=5), hook)
    assert all(math.isfinite(hook.losses[t]) for t in range(5))
    assert not math.isfinite(hook.losses[5]) and not math.isfinite(trace.losses[5])
    assert trace.diverged  # without a guard the optimizer writes NaN into the weights


def test_grad_scaler_skips_the_non_finite_step_and_recovers():
    trace = run_scenario(short("nan_batch_fp16", 10, fault_step=5), NullHook())
    assert not math.isfinite(trace.losses[5])
    assert all(math.isfinite(v) for i, v in enumerate(trace.losses) if i != 5) and not trace.diverged


def test_observe_sees_unscaled_gradients_under_grad_scaler():
    fp16, fp32 = Recorder(), Recorder()
    run_scenario(short("mlp_digits_fp16", 5), fp16)
    run_scenario(short("mlp_digits_adamw", 5), fp32)
    for step in range(5):  # a scaled gradient would be 2^16 times larger
        assert 0.5 < fp16.norms[step] / fp32.norms[step] < 2.0


def test_accumulation_divides_the_loss():
    # 4 micro-batches of 16 are the first 64 rows of the same permutation as one batch of 64
    accumulated, whole = Recorder(), Recorder()
    run_scenario(short("mlp_digits_accum4", 1), accumulated)
    run_scenario(short("mlp_digits_accum4", 1, batch=64, accumulation=1), whole)
    assert accumulated.losses[0] == pytest.approx(whole.losses[0], rel=1e-5)
    assert accumulated.norms[0] == pytest.approx(whole.norms[0], rel=1e-4)


def test_lr_runaway_compounds_on_the_schedule():
    scenario = short("lr_runaway_lm", 40, fault_step=20)
    lrs = run_scenario(scenario, NullHook()).lrs
    peak, warmup, horizon = scenario.settings["lr"], scenario.settings["warmup"], scenario.settings["horizon"]
    assert warmup > 40 and horizon == SCENARIOS["encoder_lm_warmup_cosine"].steps
    for t, lr in enumerate(lrs):  # linear warm-up: peak * (t + 1) / warmup, then x1.03^(t - 19)
        expected = peak * (t + 1) / warmup * (1.03 ** (t - 20 + 1) if t >= 20 else 1.0)
        assert lr == pytest.approx(expected, rel=1e-9)
    constant = run_scenario(short("lr_runaway", 30, fault_step=20), NullHook()).lrs
    assert constant[19] == 1e-3
    assert all(b / a == pytest.approx(1.03) for a, b in zip(constant[20:], constant[21:]))


def test_lr_jump_holds_100x():
    lrs = run_scenario(short("lr_jump", 25, fault_step=20), NullHook()).lrs
    assert lrs[19] == 1e-3 and lrs[20:] == [pytest.approx(0.1)] * 5


def test_logit_drift_leaves_the_loss_alone():
    scenario = short("logit_drift", 40, fault_step=10)
    drifted, clean = run_scenario(scenario, NullHook()), run_scenario(healthy_twin(scenario), NullHook())
    assert drifted.losses == pytest.approx(clean.losses, rel=1e-3, abs=1e-5)  # softmax ignores the offset


@pytest.mark.parametrize("name", ["random_labels", "shuffled_tokens"])
def test_label_faults_hit_fault_step_only(name):
    scenario = short(name, 101, fault_step=100)  # by step 100 the model has learned something to contradict
    faulty, clean = run_scenario(scenario, NullHook()), run_scenario(healthy_twin(scenario), NullHook())
    assert faulty.losses[:100] == clean.losses[:100]
    assert faulty.losses[100] > clean.losses[100] + 0.3


def test_probe_is_read_around_the_fault():
    trace = run_scenario(short("random_labels", 40, fault_step=5), NullHook())
    assert sorted(trace.probe_losses) == [4, 35, 39]


class Stop(Exception):
    stops_training = True


class TrainingStopped(RuntimeError):
    pass


@pytest.mark.parametrize("error", [Stop, TrainingStopped])
def test_a_stopping_hook_ends_the_run_cleanly(error):
    class Stopper(Recorder):
        def observe(self, step, loss):
            if step == 3:
                raise error("stop")

    hook = Stopper()
    trace = run_scenario(short("regression_1_adamw", 20), hook)
    assert trace.stopped_at == 3 and len(trace.losses) == 4 and not trace.diverged and hook.closed == 1


def test_other_hook_errors_propagate_after_close():
    class Broken(Recorder):
        def observe(self, step, loss):
            raise ValueError("bug")

    hook = Broken()
    with pytest.raises(ValueError):
        run_scenario(short("regression_1_adamw", 5), hook)
    assert hook.closed == 1


def test_registry():
    full, quick = suite(False), suite(True)
    assert all(name == s.name for name, s in SCENARIOS.items()) and len(full) == len(SCENARIOS)
    assert {s.name for s in quick} < {s.name for s in full}
    assert sum(s.steps for s in full if s.kind == "healthy") >= 22000
    faults = [s for s in full if s.kind == "fault"]
    assert {s.fault for s in faults} == set(FAULTS) == {s.fault for s in quick if s.kind == "fault"}
    assert all(s.steps >= s.fault_step + 60 and s.description for s in faults)
    assert all(s.fault is None and s.fault_step is None for s in full if s.kind == "healthy")
    assert {s.family for s in full} == set(FAMILIES)
