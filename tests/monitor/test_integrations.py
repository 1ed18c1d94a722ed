"""Real tiny Lightning and Hugging Face Trainer runs with the stability callback: the guard skips, a
`stop` ends training through the trainer's own flag, and the transformers floor has the hook used.

Neither framework is optional here: the `test` extra installs both, so a missing one fails."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers

from monitor_test_helpers import classification_task, mlp
from stablelab.errors import UsageError
from stablelab.integrations import transformers as hf_integration
from stablelab.integrations.lightning import StabilityCallback as LightningCallback
from stablelab.integrations.lightning import pl  # `lightning.pytorch` or `pytorch_lightning`, as the callback

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = mlp()

    def training_step(self, batch, _index):
        xb, yb = batch
        return F.cross_entropy(self.net(xb), yb)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _nan_loader(nan_step, batches=30):
    x, y, _ = classification_task(n=32 * batches)
    x[nan_step * 32 + 5, 3] = float("nan")  # batches are taken in order: batch nan_step holds it
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=False)


def _lightning_trainer(callback, max_steps):
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                      gradient_clip_val=1.0)


def test_lightning_callback_flags_and_skips_a_nan_batch(tmp_path):
    nan_step = 17
    callback = LightningCallback(log_dir=tmp_path / "run", sinks=())
    module = Module()
    trainer = _lightning_trainer(callback, 25)
    trainer.fit(module, _nan_loader(nan_step))
    kinds = [(e.kind, e.step) for e in callback.events]
    assert ("nonfinite", nan_step) in kinds and ("skip", nan_step) in kinds
    assert all(torch.isfinite(p).all() for p in module.parameters())   # the NaN step was skipped
    assert callback.monitor is None and callback.finished.step == 25   # closed at train end
    assert (tmp_path / "run" / "done").exists()                         # run store sealed at train end
    # the loss reaches observe() detached: the task is read from the graph before that
    assert callback.finished.measurer.task == "classification"
    assert "autograd graph" in callback.finished.measurer.task_reason


def test_a_stop_ends_lightning_fit_through_trainer_should_stop(tmp_path):
    nan_step = 7
    callback = LightningCallback(log_dir=tmp_path / "run", policy={"nonfinite": "stop"}, sinks=())
    module = Module()
    trainer = _lightning_trainer(callback, 25)
    trainer.fit(module, _nan_loader(nan_step))  # returns: nothing raised out of fit()
    assert trainer.should_stop and trainer.global_step == nan_step + 1
    assert all(torch.isfinite(p).all() for p in module.parameters())  # the NaN step was not applied
    kinds = [(e.kind, e.step) for e in callback.events]
    assert ("nonfinite", nan_step) in kinds and ("stop", nan_step) in kinds
    assert callback.finished.skipped_steps == [nan_step]
    assert callback.finished.stop_requested.kind == "nonfinite"


def _gpt2():
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": t, "labels": t} for t in torch.randint(0, 64, (64, 16), generator=g)]
    return model, data


class Poison(transformers.TrainerCallback):
    """Turns the gradients of one optimizer step into NaN, just before the monitor reads them."""

    def __init__(self, model, step):
        self.model, self.step = model, step

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            next(self.model.parameters()).grad.fill_(float("nan"))


def _training_args(tmp_path, **kwargs):
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=12, per_device_train_batch_size=8,
                    learning_rate=1e-3, max_grad_norm=0.0, report_to=[], save_strategy="no",
                    logging_strategy="no", use_cpu=True, disable_tqdm=True)
    return transformers.TrainingArguments(**{**settings, **kwargs})


def test_transformers_trainer_callback_on_tiny_gpt2(tmp_path):
    from stablelab.store.run_store import load_events, load_metrics

    model, data = _gpt2()
    poison_step = 6
    callback = hf_integration.StabilityCallback(log_dir=tmp_path / "run", sinks=(), sync_every=5)
    trainer = transformers.Trainer(model=model, args=_training_args(tmp_path), train_dataset=data,
                                   callbacks=[Poison(model, poison_step), callback])
    trainer.train()
    kinds = [(e.kind, e.step) for e in callback.events]
    assert ("nonfinite", poison_step) in kinds and ("skip", poison_step) in kinds
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(callback.finished.attention_layers) == 2
    assert "autograd graph" in callback.finished.measurer.task_reason  # read before the loss is detached
    rows = load_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(12))
    assert all(r["loss"] is not None for r in rows if r["step"] != poison_step)
    assert any(r.get("attn_logit_max") for r in rows)
    assert {e["kind"] for e in load_events(tmp_path / "run")} >= {"nonfinite", "skip"}


def test_a_stop_ends_transformers_train_through_should_training_stop(tmp_path):
    model, data = _gpt2()
    poison_step = 4
    callback = hf_integration.StabilityCallback(log_dir=tmp_path / "run", policy={"nonfinite": "stop"},
                                                sinks=(), sync_every=5)
    trainer = transformers.Trainer(model=model, args=_training_args(tmp_path), train_dataset=data,
                                   callbacks=[Poison(model, poison_step), callback])
    output = trainer.train()  # returns: nothing raised out of train()
    assert trainer.control.should_training_stop
    assert output.global_step == trainer.state.global_step == poison_step + 1  # stopped after the bad step
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN step was not applied
    kinds = [(e.kind, e.step) for e in callback.events]
    assert ("nonfinite", poison_step) in kinds and ("stop", poison_step) in kinds
    assert callback.finished.skipped_steps == [poison_step]


def _version(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def test_the_transformers_floor_has_the_hook_the_callback_uses_and_an_older_trainer_is_refused(monkeypatch):
    floors = re.findall(r'"transformers>=([\d.]+)"', PYPROJECT.read_text())
    assert floors and all(_version(f) >= _version(hf_integration.HOOK_SINCE) for f in floors)
    assert _version(transformers.__version__) >= _version(hf_integration.HOOK_SINCE)
    from transformers.trainer_callback import CallbackHandler

    assert hasattr(CallbackHandler, "on_pre_optimizer_step")  # the Trainer calls the hook we read in
    monkeypatch.delattr(CallbackHandler, "on_pre_optimizer_step")  # as in transformers 4.44
    with pytest.raises(UsageError, match=r"transformers>=4\.45"):
        hf_integration.StabilityCallback(sinks=())
