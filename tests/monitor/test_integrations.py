"""Real tiny Lightning and Hugging Face Trainer runs with the stability callback."""

import pytest
import torch
import torch.nn.functional as F

from monitor_test_helpers import classification_task, mlp


def test_lightning_callback_flags_and_skips_a_nan_batch(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from stablelab.integrations.lightning import StabilityCallback

    x, y, _ = classification_task(n=32 * 30)
    nan_step = 17
    x[nan_step * 32 + 5, 3] = float("nan")          # batches are taken in order: batch 17 holds it

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def training_step(self, batch, _index):
            xb, yb = batch
            return F.cross_entropy(self.net(xb), yb)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=False)
    callback = StabilityCallback(log_dir=tmp_path / "run", sinks=())
    module = Module()
    trainer = pl.Trainer(max_steps=25, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                         gradient_clip_val=1.0)
    trainer.fit(module, loader)
    kinds = [(e.kind, e.step) for e in callback.events]
    assert ("nonfinite", nan_step) in kinds and ("skip", nan_step) in kinds
    assert all(torch.isfinite(p).all() for p in module.parameters())   # the NaN step was skipped
    assert callback.monitor is None and callback.finished.step == 25   # closed at train end
    assert (tmp_path / "run" / "done").exists()                         # run store sealed at train end


def test_transformers_trainer_callback_on_tiny_gpt2(tmp_path):
    transformers = pytest.importorskip("transformers")
    from stablelab.integrations.transformers import StabilityCallback
    from stablelab.store.run_store import load_events, load_metrics

    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": t, "labels": t} for t in torch.randint(0, 64, (64, 16), generator=g)]
    poison_step = 6

    class Poison(transformers.TrainerCallback):
        """Turns the gradients of one optimizer step into NaN, just before the monitor reads them."""

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if state.global_step == poison_step:
                next(model.parameters()).grad.fill_(float("nan"))

    callback = StabilityCallback(log_dir=tmp_path / "run", sinks=(), sync_every=5)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=12, per_device_train_batch_size=8, learning_rate=1e-3,
        max_grad_norm=0.0, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
        disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   callbacks=[Poison(), callback])
    trainer.train()
    kinds = [(e.kind, e.step) for e in callback.events]
    assert ("nonfinite", poison_step) in kinds and ("skip", poison_step) in kinds
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(callback.finished.attention_layers) == 2
    rows = load_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(12))
    assert all(r["loss"] is not None for r in rows if r["step"] != poison_step)
    assert any(r.get("attn_logit_max") for r in rows)
    assert {e["kind"] for e in load_events(tmp_path / "run")} >= {"nonfinite", "skip"}
