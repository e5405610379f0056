"""The hand-off between the connection's IO thread, which receives deliveries, and the worker
thread, which takes them in lists."""
from __future__ import annotations

import queue
import time
from typing import Callable

from ..broker.base import Delivery

_STOP = object()  # put once stopping: the worker takes nothing after it


class Inbox:
    """Deliveries received and not yet taken by the worker, in arrival order."""

    def __init__(self, received: Callable[[], None]):
        self._queue: queue.Queue = queue.Queue()
        self._received = received  # bookkeeping of each delivery received

    def put(self, delivery: Delivery) -> None:
        """Hand one delivery to the worker (the connection's ``on_delivery``, on its thread)."""
        self._received()
        self._queue.put(delivery)

    def stop(self) -> None:
        """Tell the worker to take no more."""
        self._queue.put(_STOP)

    def waiting(self) -> int:
        """How many deliveries wait (approximately: the IO thread keeps adding)."""
        return self._queue.qsize()

    def take(self, size: int, block: bool, wait_s: float) -> tuple[list[Delivery], bool]:
        """Up to ``size`` waiting deliveries: waiting for the first if ``block``, then at most
        ``wait_s`` for the list to fill; and whether the stop marker came."""
        try:
            item = self._queue.get(block)
        except queue.Empty:
            return [], False
        if item is _STOP:
            return [], True
        batch = [item]
        deadline = time.monotonic() + wait_s
        while len(batch) < size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False
