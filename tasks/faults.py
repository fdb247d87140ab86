"""Deliberate failures, for the tests that prove a lost worker costs only the epoch in flight."""

from __future__ import annotations

import os

from timedistill.tasks.loops import Callback


class CrashOnce(Callback):
    """Rank `rank` raises at the start of `epoch` (0-based) unless `marker` exists, and creates
    the marker first: the restarted attempt gets past it."""

    def __init__(self, epoch: int, rank: int, marker: str) -> None:
        self.epoch, self.rank, self.marker = epoch, rank, marker

    def on_epoch_start(self, epoch: int, rank: int) -> None:
        if rank == self.rank and epoch == self.epoch and not os.path.exists(self.marker):
            with open(self.marker, "w") as handle:
                handle.write(f"failed at epoch {epoch} on rank {rank}\n")
            raise RuntimeError(f"injected failure of worker {rank} at epoch {epoch}")
