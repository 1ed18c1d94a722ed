"""One definition per signal: every column the monitor writes is declared by a registered signal,
the numbers in a row are the `stablelab.signals` functions applied to the step's tensors, a new
signal is one registration, and the Monitor's keywords are its settings dataclass."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from monitor_gpt_like import TinyGPT, token_batches, train_steps
from monitor_test_helpers import RowSink
from stablelab.errors import UsageError
from stablelab.monitor import (SIGNALS, Column, Monitor, MonitorSettings, SharpnessCheck, Signal,
                               register_signal)
from stablelab.monitor.signal_registry import describe_column, layer_column


def _gpt_run(steps=12, **keywords):
    torch.manual_seed(0)
    model = TinyGPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, eps=1e-8)
    sink = RowSink()
    probe_x, probe_y = next(token_batches(seed=9))
    loss_fn = lambda m, batch: m(*batch)[1]  # noqa: E731
    monitor = Monitor(model, optimizer, sinks=[sink], sync_every=4, elementwise_spikes=True,
                      sharpness_every=4, sharpness_loss_fn=loss_fn, sharpness_batch=(probe_x, probe_y),
                      sharpness_options={"trace_products": 0, "max_iter": 10, "tol": 1e-2},
                      opposing_every=1, opposing_batch=(probe_x, probe_y), **keywords)
    train_steps(model, optimizer, monitor, token_batches(), steps)
    monitor.close()
    return sink.row_list, monitor


def test_every_column_the_monitor_writes_is_declared_by_a_registered_signal():
    rows, _ = _gpt_run()
    written = {key for row in rows for key in row}
    undeclared = sorted(key for key in written if not describe_column(key))
    assert undeclared == []
    # and the run exercised every schedule: attention, logits, cosine, eps, spikes, update, checks
    for key in ("attn_logit_max_l0", "log_z_mean", "eps_ratio_min", "spike_fraction", "update_ratio_max",
                "sharpness_lambda_max", "opposing_signals_correlation", "grad_norm/wte.weight"):
        assert key in written, key


def test_the_registry_rejects_a_clashing_or_badly_scheduled_signal():
    with pytest.raises(UsageError, match="already registered"):
        register_signal(Signal("eps_ratio", "sampled", (Column("eps_again", "x"),)))
    with pytest.raises(UsageError, match="already belong"):
        register_signal(Signal("eps_twice", "sampled", (Column("eps_ratio_min", "x"),)))
    with pytest.raises(UsageError, match="schedule"):
        register_signal(Signal("weekly", "weekly", ()))
    assert layer_column("attn_logit_max_l", 3) == "attn_logit_max_l3"
    with pytest.raises(KeyError):
        layer_column("log_z_mean", 0)


def test_row_values_are_the_signal_functions_on_the_steps_tensors():
    """At a sampled step, recompute by hand (plain torch, not stablelab.signals) from a copy of the
    gradients and weights: eps ratio min, per-tensor cos(grad, w) and gradient norm."""
    torch.manual_seed(0)
    model = TinyGPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-6)
    sink = RowSink()
    monitor = Monitor(model, optimizer, sinks=[sink], sync_every=3)
    names = dict(model.named_parameters())
    seen = {}
    batches = token_batches()
    for step in range(7):
        x, y = next(batches)
        _, loss = model(x, y)
        loss.backward()
        if step == 6:
            seen = {n: (p.grad.detach().clone().double(), p.detach().clone().double()) for n, p in names.items()}
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
    monitor.close()
    row = next(r for r in sink.row_list if r["step"] == 6)
    for name, (g, w) in seen.items():
        assert row[f"grad_norm/{name}"] == pytest.approx(g.norm().item(), rel=1e-5)
        cos = (g.flatten() @ w.flatten()) / (g.norm() * w.norm())
        assert row[f"cos_grad_weight/{name}"] == pytest.approx(cos.item(), rel=1e-4, abs=1e-6)
    matrices = {n: g for n, (g, _) in seen.items() if g.dim() >= 2}
    by_hand = {n: (g.pow(2).mean().sqrt() / 1e-6).item() for n, g in matrices.items()}
    lowest = min(by_hand, key=by_hand.get)
    assert row["eps_param"] == lowest
    assert row["eps_ratio_min"] == pytest.approx(by_hand[lowest], rel=1e-5)


def test_a_new_signal_is_one_registration_and_reaches_rows_and_config():
    """The design.md recipe: the largest weight RMS, measured on sampled steps."""

    def measure(measurer, record):
        return torch.stack([p.detach().float().pow(2).mean().sqrt() for p in measurer.params]).amax().reshape(1)

    signal = Signal("weight_rms_max", "sampled", (Column("weight_rms_max", "largest RMS(w) over tensors", sampled=True),),
                    to_row=lambda read, record, m: {"weight_rms_max": read["weight_rms_max"][0]}, measure=measure)
    register_signal(signal)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        sink = RowSink()
        monitor = Monitor(model, optimizer, sinks=[sink], sync_every=2)
        expected = {}
        for step in range(5):
            x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
            F.cross_entropy(model(x), y).backward()
            expected[step] = max(p.detach().pow(2).mean().sqrt().item() for p in model.parameters())
            monitor.observe()
            optimizer.step()
            optimizer.zero_grad()
        monitor.close()
        assert monitor.describe()["signals"]["weight_rms_max"] == "sampled"
        got = {r["step"]: r["weight_rms_max"] for r in sink.row_list if "weight_rms_max" in r}
        assert got.keys() == {0, 2, 4}
        for step, value in got.items():
            assert value == pytest.approx(expected[step], rel=1e-6)
        assert describe_column("weight_rms_max") == "largest RMS(w) over tensors"
    finally:
        SIGNALS.pop("weight_rms_max")


def test_monitor_keywords_are_the_settings_dataclass():
    model = torch.nn.Linear(4, 2)
    batch = (torch.zeros(2, 4), torch.zeros(2, 2))
    loss_fn = lambda m, b: F.mse_loss(m(b[0]), b[1])  # noqa: E731
    by_keywords = Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), sinks=(), sync_every=5,
                          task="regression", sharpness_every=3, sharpness_loss_fn=loss_fn, sharpness_batch=batch)
    by_hand = MonitorSettings(sinks=(), sync_every=5, task="regression",
                              sharpness=SharpnessCheck(every=3, loss_fn=loss_fn, batch=batch))
    assert by_keywords.settings == by_hand
    by_keywords.close()
    # a settings object, with a keyword on top
    mixed = Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), settings=by_hand, sync_every=7)
    assert mixed.settings.sync_every == 7 and mixed.settings.sharpness.every == 3 and mixed.sync_every == 7
    mixed.close()
    with pytest.raises(TypeError, match="sync_evry"):
        Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), sync_evry=5)
    for bad in ({"sync_every": 0}, {"on_stop": "halt"}, {"incident_gap": -1}, {"sharpness_every": 2}):
        with pytest.raises(UsageError):
            Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), sinks=(), **bad)
    # every field is documented where it is declared (a comment or the dataclass docstring)
    import inspect

    from stablelab.monitor import settings as settings_module
    source = inspect.getsource(settings_module.MonitorSettings)
    for field in MonitorSettings.__dataclass_fields__:
        line = next(l for l in source.splitlines() if l.strip().startswith(f"{field}:"))
        above = source.splitlines()[source.splitlines().index(line) - 1].strip()
        assert "#" in line or above.startswith("#"), field


def test_a_monitor_copy_of_settings_is_independent():
    """Settings are plain data: a deep copy of a Monitor's settings builds an equal Monitor."""
    model = torch.nn.Linear(4, 2)
    first = Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), sinks=(), sync_every=3, outlier_factor=20.0)
    settings = copy.deepcopy(first.settings)
    first.close()
    second = Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), settings=settings)
    assert second.settings == settings and second.measurer.numbers.log_outlier == pytest.approx(math.log(20.0))
    second.close()
