"""The monitor's update-to-weight ratio (one weight sample per optimizer step; the previous step's
sample is this step's "before") against the ratio computed by hand from copies of the weights."""

import pytest
import torch
import torch.nn.functional as F

from monitor_test_helpers import RowSink
from stablelab.monitor import Monitor
from stablelab.monitor.measure import EARLY_STEPS


def _ratio(before, after, weights_at_refresh):
    # max over matrices of ||w_t - w_{t-1}|| / ||w||, with ||w|| as the monitor reads it: refreshed
    # on every one of the first EARLY_STEPS steps, then every 10 steps (it moves slowly)
    return max(float((a - b).norm() / w.norm()) for b, a, w in zip(before, after, weights_at_refresh))


@pytest.mark.parametrize("every", [1, 3])
def test_update_ratio_matches_the_weights_by_hand_also_after_a_skipped_step(every):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sink = RowSink()
    monitor = Monitor(model, optimizer, sinks=[sink], sync_every=1, update_sample=0, update_ratio_every=every,
                      policy={"*": "warn", "grad_outlier": "skip"}, outlier_warmup=5, outlier_factor=50.0)
    matrices = [model[0].weight, model[2].weight]
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    history = {-1: [w.detach().clone() for w in matrices]}
    for step in range(12):
        before = [w.detach().clone() for w in matrices]
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if step == 7:  # a 1e4x gradient: the default rule skips the step
            for p in model.parameters():
                p.grad.mul_(1e4)
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
        history[step] = [w.detach().clone() for w in matrices]
    monitor.close()
    rows = {r["step"]: r for r in sink.row_list}
    assert 7 in monitor.skipped_steps and all(torch.equal(a, b) for a, b in zip(history[6], history[7]))
    measured = {s: r["update_ratio_max"] for s, r in rows.items() if "update_ratio_max" in r}
    # every measured step but the first (no sample before step 0) and the skipped one (no update)
    assert sorted(measured) == [s for s in range(1, 12) if s % every == 0 and s != 7]
    refresh = None
    for step, value in sorted(measured.items()):
        if refresh is None or step < EARLY_STEPS or step - refresh >= 10:  # ||w|| read every early step
            refresh = step
        expected = _ratio(history[step - 1], history[step], history[refresh])
        assert value == pytest.approx(expected, rel=1e-5), step
