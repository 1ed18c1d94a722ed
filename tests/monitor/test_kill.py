"""Issue 21, point 4: the monitor's own files survive a SIGKILL of the training process. What was
read back before the kill is readable (rows of every step up to the last read-back, the events),
`stablelab report` renders it, and a new session continues the folder where it stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from stablelab.cli import main
from stablelab.monitor.log_folder import load_rows, sessions
from stablelab.store.run_store import load_events

_TRAIN = """
import sys, torch, torch.nn.functional as F
from stablelab.monitor import Monitor
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
monitor = Monitor(model, optimizer, log_dir=sys.argv[1], sinks=(), sync_every=10)
x, y = torch.randn(512, 16), torch.randint(0, 4, (512,))
for step in range(10 ** 6):
    index = torch.randint(0, 512, (32,))
    loss = F.cross_entropy(model(x[index]), y[index])
    loss.backward()
    if step == 40:
        for p in model.parameters():
            p.grad.mul_(1000.0)  # a spike: a grad_outlier event and a skip
    monitor.observe(loss)
    optimizer.step()
    optimizer.zero_grad()
    if step % 10 == 0:
        print(step, flush=True)
"""


def test_the_monitor_folder_survives_sigkill_and_report_renders_it(tmp_path):
    log_dir = tmp_path / "monitor"
    proc = subprocess.Popen([sys.executable, "-c", _TRAIN, str(log_dir)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        for line in proc.stdout:
            assert time.time() < deadline
            if int(line) >= 120:
                break
        os.kill(proc.pid, signal.SIGKILL)  # mid-training: no close(), no flush beyond the last read-back
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (log_dir / "done").exists()
    rows = load_rows(log_dir)
    steps = [r["step"] for r in rows]
    assert steps == list(range(len(steps))) and len(steps) >= 120  # every step up to the last read-back
    assert all(r["loss"] > 0 for r in rows)
    events = load_events(log_dir)
    assert ("grad_outlier", 40) in {(e["kind"], e["step"]) for e in events}
    assert ("skip", 40) in {(e["kind"], e["step"]) for e in events}

    out = tmp_path / "page"
    assert main(["report", str(log_dir), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "report.html").stat().st_size > 10_000
    assert summary["steps_logged"] == len(steps) and summary["first_step_by_kind"]["grad_outlier"] == 40

    import torch
    from stablelab.monitor import Monitor

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer, log_dir=log_dir, sinks=())
    assert monitor.step == steps[-1] + 1  # the next session goes on after the last step kept
    model(torch.randn(3, 4)).square().mean().backward()
    monitor.observe(None)
    optimizer.step()
    monitor.close()
    assert [(s["session"], s["first_step"]) for s in sessions(log_dir)] == [(0, 0), (1, steps[-1] + 1)]
