"""stablelab.run.loop: the order of the moments, divergence as a result, the store's resume; and the
shared progress bar (stablelab.run.progress)."""

import math

import torch

from stablelab.monitor.events import Event, TrainingStopped
from stablelab.run.loop import open_run, read_finished, train_loop
from stablelab.run.progress import progress_bar
from stablelab.store.run_store import load_metrics


def _model_and_optimizer(lr=0.1):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    return model, torch.optim.SGD(model.parameters(), lr=lr)


def _loss(model):
    x = torch.ones(4, 3)
    return lambda step: model(x).pow(2).mean()


def test_monitor_and_rows_see_the_gradient_before_the_update():
    model, optimizer = _model_and_optimizer()
    seen = []

    class Recorder:
        def observe(self, loss):
            seen.append(("observe", model.weight.grad is not None, model.weight.detach().clone()))

    def on_log(step, loss):
        return {"step": step, "weight": model.weight.detach().clone(), "has_grad": model.weight.grad is not None}

    result = train_loop(3, _loss(model), optimizer, monitor=Recorder(), log_every=1, on_log=on_log)
    assert result.steps_done == 3 and not result.diverged and [r["step"] for r in result.rows] == [0, 1, 2]
    for (_, has_grad, weight), row in zip(seen, result.rows):
        assert has_grad and row["has_grad"]
        assert torch.equal(weight, row["weight"])  # both before the step's update
    assert not torch.equal(result.rows[0]["weight"], result.rows[1]["weight"])  # an update between them


def test_a_nonfinite_loss_is_a_result_and_takes_no_update():
    model, optimizer = _model_and_optimizer()
    x = torch.ones(4, 3)
    before = {}

    def compute_loss(step):
        before[step] = model.weight.detach().clone()
        loss = model(x).pow(2).mean()
        return loss * float("inf") if step == 2 else loss

    result = train_loop(5, compute_loss, optimizer)
    assert result.diverged and result.nonfinite_step == 2 and result.steps_done == 2
    assert torch.equal(model.weight.detach(), before[2])  # stopped before the update


def test_diverge_on_reads_the_row_and_finite_every_zero_checks_only_log_steps():
    model, optimizer = _model_and_optimizer()
    result = train_loop(6, _loss(model), optimizer, log_every=2, finite_every=0,
                        on_log=lambda step, loss: {"step": step, "sharpness": math.nan if step == 4 else 1.0},
                        diverge_on=("sharpness",))
    assert result.diverged and result.nonfinite_step == 4 and result.steps_done == 4


def test_a_step_that_updates_by_itself_and_the_guard_stop():
    calls = []
    result = train_loop(4, lambda step: calls.append(step) or 0.5, finite_every=1, advance=calls.append)
    assert result.steps_done == 4 and calls == [0, 1, 1, 1, 2, 1, 3, 1]

    class Stopper:
        def observe(self, loss):
            raise TrainingStopped(Event("nonfinite", 0, "critical", "loss is nan"))

    model, optimizer = _model_and_optimizer()
    stopped = train_loop(3, _loss(model), optimizer, monitor=Stopper())
    assert stopped.stopped and stopped.steps_done == 0 and not stopped.diverged


def test_lr_schedule_honours_lr_scale():
    model, _ = _model_and_optimizer()
    optimizer = torch.optim.SGD([{"params": [model.weight], "lr_scale": 0.5}, {"params": [model.bias]}], lr=1.0)
    lrs = []
    train_loop(2, lambda step: (lrs.append([g["lr"] for g in optimizer.param_groups]), model(torch.ones(1, 3)).sum())[1],
               optimizer, lr_at=lambda step: 0.1 * (step + 1))
    assert lrs == [[0.05, 0.1], [0.1, 0.2]]


def test_rows_go_to_the_store_and_a_finished_run_is_read_back(tmp_path):
    config = {"lr": 0.1, "hidden": (2, 2)}
    model, optimizer = _model_and_optimizer()
    writer = open_run(tmp_path / "run", config)
    result = train_loop(4, _loss(model), optimizer, log_every=2, writer=writer,
                        on_log=lambda step, loss: {"step": step, "loss": loss.item()})
    writer.finish({"steps": result.steps_done})
    assert [r["step"] for r in load_metrics(tmp_path / "run")] == [0, 2]
    assert read_finished(tmp_path / "run", config) == ({"steps": 4}, result.rows)
    assert read_finished(tmp_path / "run", {**config, "lr": 0.2}) is None  # another config: rerun
    assert read_finished(tmp_path / "missing", config) is None and open_run(None, config) is None


def test_progress_bar_fields_and_counts():
    with progress_bar("study", 10, completed=2, unit="runs", fields={"diverged": 0}, enabled=False) as bar:
        bar.advance(3)
        bar.update(description="run 5", advance=1, diverged=1)
        assert bar.completed == 6


def test_transform_moment_monitored_value_and_the_last_step():
    """Order: observe(monitored) -> before_update (a clip) -> on_log -> step -> after_update; a
    tuple from compute_loss backpropagates its first part and shows the second; log_last logs the
    final step."""
    from stablelab.optim.transforms import clip_by_global_norm

    model, optimizer = _model_and_optimizer(lr=1.0)
    x = torch.ones(4, 3)
    order, observed = [], []

    class Recorder:
        def observe(self, value):
            observed.append(float(value))
            order.append("observe")

    def compute_loss(step):
        loss = model(x).pow(2).mean()
        return loss * 10, loss  # backpropagate 10x; the monitor and rows see the plain loss

    def before(step):
        order.append("before")
        clip_by_global_norm(model.parameters(), 1e-3)

    def on_log(step, value):
        order.append("log")
        total = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
        return {"step": step, "value": float(value.detach()), "grad_norm": float(total)}

    weights = []
    result = train_loop(5, compute_loss, optimizer, monitor=Recorder(), log_every=3, log_last=True,
                        on_log=on_log, before_update=before,
                        after_update=lambda step: (order.append("after"), weights.append(model.weight.detach().clone())))
    assert [r["step"] for r in result.rows] == [0, 3, 4]
    assert order[:4] == ["observe", "before", "log", "after"] and order[4:7] == ["observe", "before", "after"]
    assert all(abs(r["grad_norm"] - 1e-3) < 1e-6 for r in result.rows)  # rows see the clipped gradient
    assert [r["value"] for r in result.rows] == [observed[0], observed[3], observed[4]]
    # the clip bounds every update: lr 1 x norm 1e-3
    assert (weights[1] - weights[0]).norm() <= 1e-3 + 1e-7
