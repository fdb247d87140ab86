"""Progress from Ray Train workers back to the driver, where the terminal is."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray.util.queue import Empty, Full, Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

Listener = Callable[[dict[str, Any]], None]


class EventSender:
    """The worker side: picklable, never blocks training (events are dropped if nobody reads)."""

    def __init__(self, channel: Queue, tag: dict[str, Any]) -> None:
        self.channel, self.tag = channel, tag

    def __call__(self, event: dict[str, Any]) -> None:
        # progress is best effort: a full queue, or one lost with its node, never fails training
        with contextlib.suppress(Full, ray.exceptions.RayError):
            self.channel.put_nowait({**self.tag, **event})


@contextmanager
def relay(listener: Listener | None, **tag: Any) -> Iterator[EventSender | None]:
    """Yield a sender for the workers; a driver thread hands what they send to `listener`."""
    if listener is None:
        yield None
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
        yield EventSender(channel, tag)
    finally:
        stop.set()
        thread.join(timeout=2)
        with contextlib.suppress(Exception):  # the last events (the final epoch) still reach the listener
            while not channel.empty():
                listener(channel.get_nowait())
        with contextlib.suppress(Exception):
            channel.shutdown()
