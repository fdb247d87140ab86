"""What training workers tell the terminal, as typed events (sent by tasks/progress.py). Light
on purpose: the command line imports it before any command runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from timedistill.store.record import Record


class BatchStarted(Record):
    """Rank 0 is at batch `step` of `steps` of an epoch (1-based)."""

    stage: str  # teacher, distill
    horizon: int
    epoch: int
    epochs: int
    step: int
    steps: int

    def describe(self) -> str:
        return f"{self.stage} h={self.horizon} epoch {self.epoch}/{self.epochs}"


class EpochFinished(Record):
    """An epoch (1-based) is done and checkpointed, with each trainee's validation MSE."""

    stage: str
    horizon: int
    epoch: int
    epochs: int
    seconds: float  # training time of the epoch, without validation and checkpointing
    val_mse: dict[str, float]  # trainee (teacher, student, baseline) -> val MSE

    def describe(self) -> str:
        scores = ", ".join(f"{name} {value:.4f}" for name, value in self.val_mse.items())
        return f"{self.stage} h={self.horizon} epoch {self.epoch}/{self.epochs}: val MSE {scores} ({self.seconds:.1f}s)"


Event = BatchStarted | EpochFinished
Listener = Callable[[Event], None]


class Terminal(Protocol):
    """Where a run in this process shows its progress (flows/progress.py): the workers' events,
    each finished step, and notes (where Ray's dashboard is, which flow run this is)."""

    def __call__(self, event: Event) -> None: ...

    def step(self, name: str, seconds: float, cached: bool, detail: str) -> None: ...

    def note(self, text: str) -> None: ...
