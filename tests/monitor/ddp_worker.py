"""One rank of the two-process test (tests/monitor/test_distributed.py), started by torchrun:
DDP over gloo on CPU, a loss-spike skip policy, and a bad batch on rank 0 only at BAD_STEP.
Writes OUT/rank{r}.pt: the final weights, the skipped steps and the events."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from stablelab.monitor import Monitor

STEPS, BAD_STEP = 70, 50


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    model = nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    teacher = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    monitor = Monitor(model, optimizer, out / "log", {"loss_spike": "skip", "*": "warn"},
                      sinks=("console",), sync_every=5)
    for step in range(STEPS):
        g = torch.Generator().manual_seed(1000 * rank + step)  # each rank its own data
        x = torch.randn(32, 16, generator=g)
        y = (x @ teacher).argmax(-1)
        if rank == 0 and step == BAD_STEP:
            y = (y + 1) % 4  # a bad batch on rank 0 only
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
        optimizer.zero_grad()
    monitor.close()
    torch.save({"weights": [p.detach().clone() for p in net.parameters()],
                "skipped": monitor.skipped_steps,
                "events": [(e.kind, e.step, bool(e.data.get("other_rank"))) for e in monitor.events],
                "step": monitor.step}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
