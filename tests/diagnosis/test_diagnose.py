"""Issue 22: `stablelab diagnose` reads the logs the real libraries write (TensorBoard's
SummaryWriter, Lightning's CSVLogger, the Hugging Face Trainer, MLflow's file store, W&B-style
CSV/JSONL exports), runs the monitor's detectors on the logged rows, and says what went wrong and
where, or that nothing did."""

from __future__ import annotations

import csv
import json
import math
import random

import numpy as np
import pytest
import torch

import stablelab
from stablelab.cli import main


def _loss_curve(steps: int, spike_at: int | None = None, seed: int = 0):
    """A falling loss with noise; at `spike_at` the loss x20 and the gradient norm x500."""
    rng = random.Random(seed)
    for step in range(steps):
        loss = 2.0 * math.exp(-step / 150) + 0.3 + 0.03 * rng.random()
        grad = 1.0 + 0.2 * rng.random()
        if step == spike_at:
            loss, grad = loss * 20, grad * 500
        yield step, loss, grad


def _kinds_at(diagnosis) -> set[tuple[str, int]]:
    return {(i["kind"], i["start"]) for i in diagnosis.incidents}


def test_tensorboard_event_files_written_by_summarywriter(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    for step, loss, grad in _loss_curve(400, spike_at=300):
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/grad_norm", grad, step)
        writer.add_scalar("train/learning_rate", 1e-3, step)
    writer.close()
    diagnosis = stablelab.diagnose(tmp_path / "tb")
    assert diagnosis.run.source.format == "tensorboard"
    assert diagnosis.signals_found == {"loss": "train/loss", "grad_norm": "train/grad_norm", "lr": "train/learning_rate"}
    assert {("grad_outlier", 300), ("loss_spike", 300)} <= _kinds_at(diagnosis)
    assert diagnosis.log_interval == 1 and "grad_outlier at step 300" in diagnosis.verdict


def test_a_healthy_log_says_so_plainly(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    for step, loss, grad in _loss_curve(400):
        writer.add_scalar("loss", loss, step)
        writer.add_scalar("grad_norm", grad, step)
    writer.close()
    diagnosis = stablelab.diagnose(tmp_path / "tb")
    assert diagnosis.incidents == [] and diagnosis.verdict.startswith("nothing wrong found in 400 logged steps")
    assert "no lr logged" in " ".join(diagnosis.notes)


def test_lightning_csvlogger_metrics_with_a_bad_batch(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long()

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

        def training_step(self, batch, index):
            xb, yb = batch
            if self.global_step == 150:  # one corrupted batch: inputs x1000
                xb = xb * 1000.0
            loss = torch.nn.functional.cross_entropy(self.net(xb), yb)
            self.log("train_loss", loss)
            return loss

        def on_before_optimizer_step(self, optimizer):
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.parameters()]))
            self.log("grad_norm", norm)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=3e-3)

    logger = CSVLogger(str(tmp_path / "logs"), name="run")
    trainer = pl.Trainer(max_steps=250, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Module(), DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True))
    diagnosis = stablelab.diagnose(tmp_path / "logs")
    assert diagnosis.run.source.path.name == "metrics.csv" and diagnosis.run.source.format == "csv"
    assert diagnosis.signals_found["loss"] == "train_loss" and diagnosis.signals_found["grad_norm"] == "grad_norm"
    assert ("grad_outlier", 150) in _kinds_at(diagnosis)


def test_hf_trainer_state_of_a_real_trainer_run(tmp_path):
    import transformers

    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    pattern = torch.arange(16) % 8  # a sequence the model learns quickly
    data = [{"input_ids": pattern.clone(), "labels": pattern.clone()} for _ in range(512)]
    calls = {"n": 0}

    def collate(batch):
        calls["n"] += 1
        ids = torch.stack([b["input_ids"] for b in batch])
        if calls["n"] == 61:  # step 61 (1-based in HF's log): random tokens, a loss spike
            ids = torch.randint(0, 32, ids.shape, generator=torch.Generator().manual_seed(1))
        return {"input_ids": ids, "labels": ids}

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=80, per_device_train_batch_size=4, learning_rate=3e-3,
        logging_steps=1, save_strategy="steps", save_steps=40, report_to=[], use_cpu=True,
        disable_tqdm=True, lr_scheduler_type="constant")
    transformers.Trainer(model=model, args=args, train_dataset=data, data_collator=collate).train()
    diagnosis = stablelab.diagnose(tmp_path / "hf")
    assert diagnosis.run.source.format == "hf"
    assert diagnosis.run.source.path.parent.name == "checkpoint-80"  # the furthest trainer_state.json
    assert set(diagnosis.signals_found) >= {"loss", "grad_norm", "lr"}
    # the random batch at step 61: loss 0.07 -> 4.2 and gradient norm 0.17 -> 3.4 (20x: a grad_spike; the
    # loss, still falling fast, has a wide window that a 60x jump in loss does not leave by z 6)
    assert ("grad_spike", 61) in _kinds_at(diagnosis) and len(diagnosis.incidents) == 1
    assert any("mean loss over each logging interval" in n for n in diagnosis.notes)


def test_mlflow_file_store_run(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 writes a file store only when told to
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    try:
        with mlflow.start_run() as active:
            for step, loss, grad in _loss_curve(300, spike_at=200):
                mlflow.log_metrics({"train_loss": loss, "grad_norm": grad}, step=step)
        run_dir = next((tmp_path / "mlruns").glob(f"*/{active.info.run_id}"))
    finally:
        mlflow.set_tracking_uri(None)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # reading needs no setting from the user
    diagnosis = stablelab.diagnose(run_dir)
    assert diagnosis.run.source.format == "mlflow"
    assert {("grad_outlier", 200), ("loss_spike", 200)} <= _kinds_at(diagnosis)


def test_wandb_style_csv_and_jsonl_exports_and_several_runs_in_one_folder(tmp_path, capsys):
    folder = tmp_path / "exports"
    folder.mkdir()
    with open(folder / "run_a.csv", "w", newline="") as handle:  # W&B's "Export CSV": _step + keys
        writer = csv.writer(handle)
        writer.writerow(["_step", "_runtime", "train/loss", "train/grad_norm"])
        for step, loss, grad in _loss_curve(300, spike_at=250):
            writer.writerow([step, step * 0.1, loss, grad])
    with open(folder / "run_b.jsonl", "w") as handle:  # a history export: one JSON object a line
        for step, loss, grad in _loss_curve(300, seed=1):
            handle.write(json.dumps({"_step": step, "train/loss": loss, "train/grad_norm": grad}) + "\n")
    assert main(["diagnose", str(folder), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "run_a.csv: " in printed and "grad_outlier at step 250" in printed
    assert "run_b.jsonl: nothing wrong found" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["format"] for r in summary["runs"]] == ["csv", "jsonl"]
    comparison = (tmp_path / "out" / "report.html").read_text()
    assert comparison.index("run_a.csv") < comparison.index("run_b.jsonl")  # most incidents first
    for run in summary["runs"]:
        assert (tmp_path / "out" / run["folder"].split("/")[-1] / "report.html").exists()
        assert set(run) >= {"verdict", "incidents", "signals_found", "signals_missing", "log_interval"}


def test_a_log_every_50_steps_still_flags_a_lasting_divergence(tmp_path):
    """Logged every 50 steps: the interval is read and said; the loss blowing up is still seen."""
    path = tmp_path / "metrics.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "train_loss"])
        for step in range(0, 20000, 50):
            loss = 2.0 * math.exp(-step / 3000) + 0.3 if step < 15000 else 0.5 * 1.2 ** ((step - 15000) / 50)
            writer.writerow([step, loss])
    diagnosis = stablelab.diagnose(path)
    assert diagnosis.log_interval == 50 and any("logged every 50 steps" in n for n in diagnosis.notes)
    assert diagnosis.signals_missing == ["grad_norm", "lr"]
    assert diagnosis.incidents and min(i["start"] for i in diagnosis.incidents) >= 15000
    assert "grad_spike" in diagnosis.detection.detectors_off


def test_the_page_and_summary(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    for step, loss, grad in _loss_curve(300, spike_at=200):
        writer.add_scalar("loss", loss, step)
    writer.close()
    assert main(["diagnose", str(tmp_path / "tb"), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Verdict" in page and "no grad_norm logged: gradient detectors off" in page
    assert page.count("data:image/png;base64,") == 1 and "http" not in page.split("<body>")[1]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["signals_missing"] == ["grad_norm", "lr"] and summary["log_interval"] == 1
    assert [(i["kind"], i["start"]) for i in summary["incidents"]] == [("loss_spike", 200)]


BAD = [
    ("/nonexistent/log.csv", [], "does not exist"),
    ("{empty}", [], "is empty"),
    ("{blank}", [], "cannot tell its format"),
    ("{blank}", ["--format", "jsonl"], "holds no JSON line"),
    ("{noloss}", [], "no loss column among step, accuracy, val_acc"),
    ("{noloss}", ["--map", "accuracy"], "--map takes COLUMN=SIGNAL"),
    ("{noloss}", ["--map", "nothere=loss"], "the log has no column 'nothere'"),
    ("{noloss}", ["--map", "accuracy=banana"], "unknown signal 'banana'"),
    ("{noloss}", ["--format", "foo"], "invalid choice: 'foo'"),
    ("{folder}", [], "holds no training log"),
]


@pytest.mark.parametrize("path, flags, fragment", BAD, ids=[f"{p} {' '.join(f)}" for p, f, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(path, flags, fragment, tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "log").write_text("")
    (tmp_path / "noloss.csv").write_text("step,accuracy,val_acc\n0,0.5,0.4\n1,0.6,0.5\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("hello")
    places = {"empty": tmp_path / "empty.csv", "blank": tmp_path / "log", "noloss": tmp_path / "noloss.csv", "folder": tmp_path / "folder"}
    with pytest.raises(SystemExit) if "invalid choice" in fragment else _nothing():
        status = main(["diagnose", path.format(**places), *flags, "--out", str(tmp_path / "out")])
        assert status == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "out").exists()  # refused before any output


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_logged_nan_is_a_finding_and_a_blank_is_a_gap(tmp_path):
    """Lightning's CSVLogger writes `nan` for a NaN loss and leaves a cell blank when nothing was
    logged: the first is a non-finite step, the second nothing at all. The same in JSONL."""
    rows = [(step, loss, grad) for step, loss, grad in _loss_curve(200)]
    with open(tmp_path / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "train_loss", "grad_norm"])
        for step, loss, grad in rows:
            writer.writerow([step, "nan" if step == 150 else loss, "" if step % 2 else grad])
    diagnosis = stablelab.diagnose(tmp_path / "metrics.csv")
    assert [(i["kind"], i["start"]) for i in diagnosis.incidents] == [("nonfinite", 150)]
    assert len(diagnosis.run.series["grad_norm"][0]) == 100  # the blanks are gaps
    with open(tmp_path / "history.jsonl", "w") as handle:
        for step, loss, grad in rows:
            entry = {"_step": step, "train/loss": float("nan") if step == 120 else loss}
            handle.write(json.dumps(entry) + "\n")  # json writes NaN as the NaN token
    diagnosis = stablelab.diagnose(tmp_path / "history.jsonl")
    assert [(i["kind"], i["start"]) for i in diagnosis.incidents] == [("nonfinite", 120)]


def test_spans_counted_in_steps_keep_their_length_in_a_log_every_10_steps():
    from stablelab.diagnosis.detect import interval_settings

    assert interval_settings(1) == {}
    ten = interval_settings(10)
    # loss_spike: window and min_values 32 steps -> 4 values, kept at 32 (the floor, its live count)
    assert ten["loss_spike"] == {"window": 32, "min_values": 32}
    # grad_spike: warm-up 20 -> 2; window 256 -> 26, raised to 32; min_values 32 -> 4, raised to 32
    assert ten["grad_spike"] == {"warmup": 2, "window": 32, "min_values": 32}
    # update_ratio: window 200 -> 20, raised to 32; min_values 20 -> 2, raised to its live 20 (not 32)
    assert {k: ten["update_ratio"][k] for k in ("window", "min_values")} == {"window": 32, "min_values": 20}
    assert ten["loss_rise"] == {"window": 32, "cooldown": 10} and ten["update_ratio"]["cooldown"] == 5


def test_a_monitors_own_log_at_interval_1_gives_the_live_monitors_warnings(tmp_path):
    """Issue 22, Done-when: at interval 1, a log holding the monitor's own columns (its
    metrics.jsonl, as a Monitor forwarding its rows to any logger would write them) gets the
    live monitor's warnings, kind and step for kind and step: a 10x gradient at step 150, a 30x
    learning-rate jump at step 400 and a NaN loss at step 600 on a small classifier."""
    import torch
    import torch.nn.functional as F

    from stablelab.diagnosis.detect import NEEDS
    from stablelab.monitor import Monitor

    x, y, g = _teacher_task(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = Monitor(model, optimizer, log_dir=tmp_path / "run", policy={"*": "warn"}, sinks=())
    for step in range(700):
        if step == 400:
            optimizer.param_groups[0]["lr"] *= 30
        index = torch.randint(0, len(x), (32,), generator=g)
        loss = F.cross_entropy(model(x[index]), y[index])
        loss.backward()
        if step == 150:
            for p in model.parameters():
                p.grad.mul_(10.0)
        monitor.observe(loss * float("nan") if step == 600 else loss)
        if step != 600:
            optimizer.step()
        optimizer.zero_grad()
    monitor.close()
    live = {(e.kind, e.step) for e in monitor.events if e.severity != "info" and e.kind in NEEDS}
    assert {k for k, _ in live} >= {"grad_spike", "update_ratio", "nonfinite"}  # the faults were seen live
    diagnosis = stablelab.diagnose(tmp_path / "run" / "metrics.jsonl")
    assert diagnosis.log_interval == 1
    assert {(e.kind, e.step) for e in diagnosis.detection.events if e.severity != "info"} == live


def test_thresholds_for_a_log_interval_come_from_the_sparser_calibration():
    """A log every k steps takes the calibrated row of the smallest measured interval >= k (worked
    by hand from the table), the largest row beyond it, and nothing at interval 1; detect() builds
    its detectors with those values unless the caller set them."""
    from stablelab.diagnosis.calibration import LOG_THRESHOLDS, thresholds_for_interval
    from stablelab.diagnosis.detect import detect
    from stablelab.monitor.settings import MonitorSettings

    assert thresholds_for_interval(1) == {} and thresholds_for_interval(None) == {}
    assert thresholds_for_interval(3) == LOG_THRESHOLDS[5]
    assert thresholds_for_interval(10) == LOG_THRESHOLDS[10]
    assert thresholds_for_interval(11) == LOG_THRESHOLDS[25]
    assert thresholds_for_interval(1000) == LOG_THRESHOLDS[100]
    steps = np.arange(0, 2000, 10)
    series = {"loss": (steps, np.exp(-steps / 1000.0)), "grad_norm": (steps, np.ones(len(steps)))}
    used = {d.kind: d for d in _detectors_of(detect, series, None, 10)}
    assert used["grad_spike"].z == LOG_THRESHOLDS[10]["grad_spike"]["z"]
    assert used["loss_spike"].z == LOG_THRESHOLDS[10]["loss_spike"]["z"]
    mine = MonitorSettings(detectors={"grad_spike": {"z": 3.5}})
    assert {d.kind: d for d in _detectors_of(detect, series, mine, 10)}["grad_spike"].z == 3.5


def _detectors_of(detect, series, settings, interval):
    """The detectors detect() built (captured from build_detectors)."""
    import sys

    module = sys.modules["stablelab.diagnosis.detect"]
    built = []
    original = module.build_detectors

    def capture(overrides):
        built.extend(original(overrides))
        return built

    module.build_detectors = capture
    try:
        detect(series, settings, interval=interval)
    finally:
        module.build_detectors = original
    return built


def test_per_tensor_norms_logged_by_lightnings_grad_norm_give_the_live_monitors_gradient_warnings(tmp_path):
    """A log with per-tensor gradient norms (Lightning's `grad_norm(module, 2)` utility, written by
    its CSVLogger) gets the monitor's per-tensor rules: a gradient scaled 20x as a whole at step 150
    (the global norm only ~10x its noisy typical value, under the 12x level; every tensor >= 7x its
    own) and the first bias's gradient 100x at step 300 are warned at the steps, and with the
    kinds, the live monitor warns them; from the total norm alone step 150 is not seen, and the note says
    the per-tensor rules ran. SGD with momentum: the live spike ratio is the same running mean."""
    import torch
    import torch.nn.functional as F
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities import grad_norm

    from stablelab.monitor import Monitor

    x, y, g = _teacher_task(1)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = Monitor(model, optimizer, policy={"*": "warn"}, sinks=())
    logger = CSVLogger(str(tmp_path), name="run", version=0)
    for step in range(400):
        index = torch.randint(0, len(x), (32,), generator=g)
        loss = F.cross_entropy(model(x[index]), y[index])
        loss.backward()
        if step == 150:
            for p in model.parameters():
                p.grad.mul_(20.0)
        if step == 300:
            model[0].bias.grad.mul_(100.0)
        logger.log_metrics({"train_loss": loss.item(), **{k: v.item() for k, v in grad_norm(model, 2).items()}},
                           step=step)
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
    monitor.close()
    logger.finalize("success")
    kinds = ("grad_spike", "grad_outlier")
    live = {(e.kind, e.step) for e in monitor.events if e.severity != "info" and e.kind in kinds}
    assert {s for _, s in live} >= {150, 300}, sorted(live)
    diagnosis = stablelab.diagnose(tmp_path / "run" / "version_0" / "metrics.csv")
    assert len(diagnosis.run.tensors) == 6 and any("per-tensor gradient norms of 6" in n for n in diagnosis.notes)
    assert diagnosis.summary()["per_tensor_norms"] == sorted(name for name, _ in model.named_parameters())
    assert {(e.kind, e.step) for e in diagnosis.detection.events if e.severity != "info" and e.kind in kinds} == live
    from stablelab.diagnosis.detect import detect

    one_norm = detect(diagnosis.run.series, interval=1)  # grad_2.0_norm_total only
    assert 150 not in {e.step for e in one_norm.events if e.severity != "info" and e.kind in kinds}


def _teacher_task(seed: int):
    """512 inputs of 16 features labelled by a random linear teacher into 4 classes, and the
    generator that drew them (it also draws the batches)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 16, generator=g)
    return x, (x @ torch.randn(16, 4, generator=g)).argmax(-1), g
