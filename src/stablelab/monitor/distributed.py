"""The monitor under torch.distributed: every rank takes the same guard decision.

Each rank's detectors see its own loss and activations (DDP makes only the gradients the same),
so left alone one rank would skip a step another takes and the replicas would drift apart. At
every decision point (each step the guard may act before the optimizer, and each flush) every
rank reduces, with one all_reduce(MAX) of a few integers, which actions its own events call for;
each rank then carries out the union. An action called for on another rank only is caused by an
event marked `other_rank` naming the detector kind. Rank 0 writes the log folder and prints; the
others write nothing unless asked (`Monitor(all_ranks=True)`)."""

from __future__ import annotations

import torch

from stablelab.monitor.events import Event
from stablelab.monitor.guard import ORDER


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of an initialised default process group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class Agreement:
    """Reduces each rank's planned actions so every rank carries out the same ones. `kinds`: every
    event kind that can cause an action, the same list on every rank (from the detectors)."""

    def __init__(self, kinds: list[str]):
        self.kinds = sorted(set(kinds))
        self.rank, self.world = rank_and_world()

    @property
    def active(self) -> bool:
        return self.world > 1

    def _device(self) -> torch.device:
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def broadcast(self, value: int) -> int:
        """Rank 0's integer on every rank (the first step number)."""
        vector = torch.tensor([value], dtype=torch.int64, device=self._device())
        torch.distributed.broadcast(vector, src=0)
        return int(vector.item())

    def agree(self, planned: dict[str, Event], dirty: bool, step: int,
              data: dict | None = None) -> tuple[dict[str, Event], bool]:
        """(the actions every rank takes, whether any rank saw a warning). `step`, `data`: for
        the event standing in for a cause seen on another rank only (data: this rank's row values
        an action needs, such as grad_norm for clip)."""
        codes = [self.kinds.index(planned[a].kind) + 1 if a in planned and planned[a].kind in self.kinds
                 else (len(self.kinds) + 1 if a in planned else 0) for a in ORDER]
        vector = torch.tensor(codes + [int(dirty)], dtype=torch.int64, device=self._device())
        torch.distributed.all_reduce(vector, op=torch.distributed.ReduceOp.MAX)
        reduced = vector.tolist()
        agreed = {}
        for action, code in zip(ORDER, reduced[:-1]):
            if action in planned:
                agreed[action] = planned[action]
            elif code:
                kind = self.kinds[code - 1] if code <= len(self.kinds) else "other"
                agreed[action] = Event(kind, step, "warning", f"{kind} on another rank: every rank "
                                       f"takes the guard's {action}", {**(data or {}), "other_rank": True})
        return agreed, bool(reduced[-1])
