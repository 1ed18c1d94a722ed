"""The Lightning and Hugging Face callbacks keep the monitor's state in the trainer's own checkpoint: a
run resumed from it continues the step numbers, restores the detectors and gives the events the
uninterrupted run gives."""

import json

import torch
import torch.nn.functional as F
import transformers

from monitor_test_helpers import classification_task, mlp
from stablelab.integrations import transformers as hf_integration
from stablelab.integrations.lightning import StabilityCallback as LightningCallback
from stablelab.integrations.lightning import pl
from stablelab.monitor.log_folder import load_rows

POLICY = {"nonfinite": "skip", "*": "warn"}


# -- Lightning ----------------------------------------------------------------------------------
class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = mlp()

    def training_step(self, batch, _index):
        xb, yb = batch
        return F.cross_entropy(self.net(xb), yb)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


class FirstState(pl.Callback):
    """The monitor's state as the callback (listed before this one) started it."""

    def __init__(self, callback):
        self.callback, self.state = callback, None

    def on_train_start(self, trainer, pl_module):
        self.state = self.callback.monitor.state_dict()


def _fit(checkpoint_dir, max_steps, callback, ckpt_path=None, checkpoint_every=None):
    # one epoch is K=10 batches, batch 3 holding a NaN: the nonfinite detector fires at steps 3, 13
    x, y, _ = classification_task(n=32 * 10)
    x[3 * 32 + 1, 2] = float("nan")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=False)
    checkpoints = [pl.callbacks.ModelCheckpoint(dirpath=checkpoint_dir, every_n_train_steps=checkpoint_every,
                                                save_top_k=-1)] if checkpoint_every else []
    probe = FirstState(callback)
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False,
                         enable_checkpointing=bool(checkpoints), enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback, probe, *checkpoints])
    trainer.fit(Module(), loader, ckpt_path=ckpt_path)
    return trainer, probe.state


def _lightning_callback(log_dir):
    return LightningCallback(log_dir=log_dir, policy=POLICY, sinks=(), sync_every=4, update_ratio_every=0)


def test_lightning_fit_from_a_checkpoint_continues_the_monitor(tmp_path):
    K = 10
    whole = _lightning_callback(None)
    _fit(tmp_path / "whole", 2 * K, whole)
    expected = [(e.kind, e.step) for e in whole.events]
    assert ("nonfinite", 3) in expected and ("nonfinite", K + 3) in expected

    first = _lightning_callback(tmp_path / "run")
    _fit(tmp_path / "ckpt", K, first, checkpoint_every=K)
    path = tmp_path / "ckpt" / f"epoch=0-step={K}.ckpt"
    saved = torch.load(path, weights_only=True)["callbacks"][LightningCallback.__qualname__]
    assert saved["step"] == K

    resumed = _lightning_callback(tmp_path / "run")
    trainer, at_start = _fit(tmp_path / "ckpt", 2 * K, resumed, ckpt_path=path, checkpoint_every=K)
    assert trainer.global_step == 2 * K
    assert at_start["step"] == K and at_start["detectors"] == saved["detectors"]
    assert at_start["numbers"] == saved["numbers"]
    after = [(e.kind, e.step) for e in resumed.events]
    assert min(step for _, step in after) >= K
    assert [(e.kind, e.step) for e in first.events] + after == expected
    rows = load_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(2 * K))
    assert [r["session"] for r in rows] == [0] * K + [1] * K


# -- Hugging Face Trainer -----------------------------------------------------------------------
class Poison(transformers.TrainerCallback):
    """Turns the gradients of some optimizer steps into NaN, just before the monitor reads them."""

    def __init__(self, steps):
        self.steps = steps

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            next(model.parameters()).grad.fill_(float("nan"))


class FirstMonitorState(transformers.TrainerCallback):
    def __init__(self, callback):
        self.callback, self.state = callback, None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.state is None:
            self.state = self.callback.monitor.state_dict()


def _train(tmp_path, log_dir, max_steps, save_steps=None, resume=None):
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": t, "labels": t} for t in torch.randint(0, 64, (64, 16), generator=g)]
    callback = hf_integration.StabilityCallback(log_dir=log_dir, policy=POLICY, sinks=(), sync_every=4)
    probe = FirstMonitorState(callback)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=8,
        learning_rate=1e-3, lr_scheduler_type="constant", max_grad_norm=0.0, report_to=[],
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        logging_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   callbacks=[Poison({2, 9}), callback, probe])
    trainer.train(resume_from_checkpoint=resume)
    return trainer, callback, probe.state


def test_transformers_train_resumed_from_a_checkpoint_continues_the_monitor(tmp_path):
    _, whole, _ = _train(tmp_path / "whole", None, 12)
    expected = [(e.kind, e.step) for e in whole.events]
    assert ("nonfinite", 2) in expected and ("nonfinite", 9) in expected

    _, first, _ = _train(tmp_path, tmp_path / "run", 6, save_steps=6)
    trainer_state = json.loads((tmp_path / "out" / "checkpoint-6" / "trainer_state.json").read_text())
    saved = trainer_state["stateful_callbacks"][hf_integration.STATE_KEY]
    assert saved["step"] == 6

    trainer, resumed, at_start = _train(tmp_path, tmp_path / "run", 12, save_steps=6, resume=True)
    assert trainer.state.global_step == 12
    assert at_start["step"] == 6 and at_start["detectors"] == saved["detectors"]
    after = [(e.kind, e.step) for e in resumed.events]
    assert min(step for _, step in after) >= 6
    assert [(e.kind, e.step) for e in first.events] + after == expected
    rows = load_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(12))
    assert [r["session"] for r in rows] == [0] * 6 + [1] * 6
