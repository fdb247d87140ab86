"""Progress from Ray Train workers back to the driver, where the terminal is: rank 0 sends typed
events through a Ray queue, and a driver thread hands them to the listener."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray.util.queue import Empty, Full, Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from timedistill.tasks.events import BatchStarted, EpochFinished, Event, Listener
from timedistill.tasks.loops import Callback

PROGRESS_UPDATES_PER_EPOCH = 20


class Progress(Callback):
    """The worker side: picklable, sends from rank 0 only, never blocks training (events are
    dropped if nobody reads)."""

    def __init__(self, channel: Queue, stage: str, horizon: int, epochs: int) -> None:
        self.channel, self.stage, self.horizon, self.epochs = channel, stage, horizon, epochs

    def on_batch(self, epoch: int, step: int, steps: int, rank: int) -> None:
        if rank == 0 and step % max(steps // PROGRESS_UPDATES_PER_EPOCH, 1) == 0:
            self.send(BatchStarted(stage=self.stage, horizon=self.horizon, epoch=epoch + 1, epochs=self.epochs,
                                   step=step, steps=steps))

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any], rank: int) -> None:
        if rank == 0:
            scores = {name.removesuffix("/val_mse"): value for name, value in metrics.items()
                      if name.endswith("/val_mse")}
            self.send(EpochFinished(stage=self.stage, horizon=self.horizon, epoch=epoch + 1, epochs=self.epochs,
                                    seconds=metrics["epoch_seconds"], val_mse=scores))

    def send(self, event: Event) -> None:
        # progress is best effort: a full queue, or one lost with its node, never fails training
        with contextlib.suppress(Full, ray.exceptions.RayError):
            self.channel.put_nowait(event)


@contextmanager
def relay(listener: Listener | None, *, stage: str, horizon: int, epochs: int) -> Iterator[list[Callback]]:
    """Yield the callbacks that send the workers' progress (none without a listener); a driver
    thread hands what they send to `listener`."""
    if listener is None:
        yield []
        return
    # on the driver's node: a worker node may be lost, the driver's node is where the listener is
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    channel = Queue(maxsize=1000, actor_options={"num_cpus": 0, "scheduling_strategy": here})
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            try:
                listener(channel.get(timeout=0.25))
            except (Empty, queue.Empty):
                continue
            except Exception:  # a dead queue at shutdown, a listener error: progress is best effort
                return

    thread = threading.Thread(target=pump, name="timedistill-progress", daemon=True)
    thread.start()
    try:
        yield [Progress(channel, stage, horizon, epochs)]
    finally:
        stop.set()
        thread.join(timeout=2)
        with contextlib.suppress(Exception):  # the last events (the final epoch) still reach the listener
            while not channel.empty():
                listener(channel.get_nowait())
        with contextlib.suppress(Exception):
            channel.shutdown()
