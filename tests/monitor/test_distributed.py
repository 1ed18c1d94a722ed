"""Issue 26: under torch.distributed every rank takes the same guard decision and only rank 0
writes. Two real gloo processes on CPU, started by torchrun as a user would."""

import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_a_loss_spike_on_one_rank_leads_both_ranks_to_the_same_skip(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0",
                             str(WORKER), str(tmp_path)],
                            capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert ("loss_spike", 50, False) in rank0["events"]           # rank 0 saw the bad batch
    assert ("loss_spike", 50, False) not in rank1["events"]       # rank 1 did not ...
    assert ("skip", 50, False) in rank1["events"]                 # ... and still skipped with it
    assert rank0["skipped"] == rank1["skipped"] == [50]
    for a, b in zip(rank0["weights"], rank1["weights"]):
        assert torch.equal(a, b)                                  # the replicas did not drift
    assert (tmp_path / "log" / "metrics.jsonl").exists()          # rank 0 writes the folder ...
    assert not (tmp_path / "log-rank1").exists()                  # ... the others nothing
    assert result.stderr.count("incident opened") == 1            # one rank prints
