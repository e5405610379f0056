"""The channel of a memory connection (generation, subscriptions, unsettled deliveries) and
the loop that is the connection's thread: the parts of ``MemoryConnection``."""
from __future__ import annotations

import heapq
import itertools
import logging
import queue as _queue
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .base import Delivery
from .properties import published_values

if TYPE_CHECKING:
    from .memory import MemoryBroker
    from .memory_queues import MemoryQueue, StoredMessage

log = logging.getLogger(__name__)

DELIVERY_COUNT = "x-delivery-count"
_MAX_WAIT_S = 0.5  # the loop looks at the clocks at least this often


class MemoryChannel:
    """The channel of a memory connection: its generation, subscriptions and unsettled
    deliveries. Every method runs under the broker's lock."""

    def __init__(self, broker: "MemoryBroker", queues: list[str], prefetch: int,
                 inbox: _queue.SimpleQueue):
        self.broker = broker
        self.queues = queues
        self.prefetch = prefetch
        self.generation = 0
        self.open = False
        self._inbox = inbox
        self._tags = itertools.count(1)
        self._unacked: dict[int, tuple["MemoryQueue", "StoredMessage"]] = {}
        self._holding: Counter[str] = Counter()  # unacked deliveries per queue

    def opened(self) -> None:
        """A new channel: a new generation, its tags counted from 1."""
        self.generation += 1
        self._tags = itertools.count(1)
        self.open = True

    def subscribe(self, url: str) -> None:
        """Subscribe to every queue not subscribed to yet (on the connection to ``url``)."""
        for name in self.queues:
            consumers = self.broker.queue(name).consumers
            if self not in consumers:
                consumers.append(self)
        log.info("consuming from %s (prefetch %d) on %s", ", ".join(self.queues),
                 self.prefetch, url)

    def unsubscribe(self) -> None:
        """Cancel every subscription (deliveries held stay ours)."""
        for name in self.queues:
            consumers = self.broker.queue(name).consumers
            if self in consumers:
                consumers.remove(self)

    def has_room(self, queue: str) -> bool:
        """True if the prefetch window on ``queue`` has room for one more delivery."""
        return self.open and (not self.prefetch or self._holding[queue] < self.prefetch)

    def holding(self, queue: str) -> int:
        """How many deliveries from ``queue`` are unsettled on this channel."""
        return self._holding[queue]

    def take(self, queue: "MemoryQueue", message: "StoredMessage") -> None:
        """Deliver ``message`` from ``queue``: ours, unsettled, until acked or returned."""
        tag = next(self._tags)
        self._unacked[tag] = (queue, message)
        self._holding[queue.name] += 1
        properties = {**message.properties, "headers": dict(message.properties["headers"])}
        if queue.quorum:
            properties["headers"][DELIVERY_COUNT] = message.returns
        self._inbox.put(Delivery(message.body, tag, self.generation, queue.name,
                                 message.exchange, message.routing_key, message.redelivered,
                                 properties))

    def is_current(self, delivery: Delivery) -> bool:
        """True while the channel ``delivery`` arrived on is open."""
        return delivery.generation == self.generation and self.open

    def live(self, delivery: Delivery) -> bool:
        """``is_current``, logging why not otherwise."""
        if self.is_current(delivery):
            return True
        log.info("not settling delivery %d of channel %d: that channel is gone; the broker "
                 "redelivers it", delivery.tag, delivery.generation)
        return False

    def settle(self, delivery: Delivery) -> bool:
        """``delivery`` is settled; False if it was not unsettled (a double ack)."""
        held = self._unacked.pop(delivery.tag, None)
        if held is None:
            return False
        self._holding[held[0].name] -= 1
        return True

    def ack(self, deliveries: list[Delivery]) -> list[int]:
        """Settle the current ones of ``deliveries``; the tags it did not hold (double acks)."""
        unknown = [d.tag for d in deliveries if self.live(d) and not self.settle(d)]
        self.broker.dispatch()
        return unknown

    def forward(self, delivery: Delivery, queue: str, body: bytes,
                properties: Mapping[str, Any]) -> str | None:
        """Publish a copy of current ``delivery`` to ``queue``, then settle it; why the
        channel must close if that went wrong (RabbitMQ would close it), else None."""
        if not self.live(delivery):
            return None
        if queue not in self.broker.queue_names:
            log.error("forwarded copy returned by the broker (312 NO_ROUTE, queue %r "
                      "missing?); reopening the channel so the original is redelivered", queue)
            return "the forwarded copy was returned"
        self.broker.put(queue, body, published_values(properties))
        settled = self.settle(delivery)
        self.broker.dispatch()
        return None if settled else f"406 PRECONDITION_FAILED - unknown delivery tag {delivery.tag}"

    def gone(self) -> None:
        """The channel closed: what it held goes back to the queues, in delivery order."""
        self.open = False
        self.unsubscribe()
        by_queue: dict[str, tuple["MemoryQueue", list]] = {}
        for tag in sorted(self._unacked):
            queue, message = self._unacked[tag]
            by_queue.setdefault(queue.name, (queue, []))[1].append(message)
        self._unacked.clear()
        self._holding.clear()
        for queue, messages in by_queue.values():
            self.broker.returned(queue, messages)
        self.broker.dispatch()


class CallbackLoop:
    """The connection's thread: callbacks posted from any thread, timers and deliveries, run
    one at a time in order (what pika's IO loop is to the transport)."""

    def __init__(self, broker: "MemoryBroker"):
        self.inbox: _queue.SimpleQueue = _queue.SimpleQueue()
        self.stopped = False
        self._broker = broker
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop's thread (any thread may post)."""
        self.inbox.put(fn)

    def call_later(self, seconds: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop's thread in ``seconds`` (from the loop's thread only)."""
        heapq.heappush(self._timers, (time.monotonic() + seconds, next(self._order), fn))

    def run(self, deliver: Callable[[Delivery], None]) -> None:
        """Run callbacks, timers and ``deliver`` for deliveries until ``stopped``; let the
        broker's messages expire meanwhile."""
        while not self.stopped:
            try:
                item = self.inbox.get(timeout=self._wait_s())
            except _queue.Empty:
                item = None
            if isinstance(item, Delivery):
                deliver(item)
            elif item is not None:
                item()
            while self._timers and self._timers[0][0] <= time.monotonic() \
                    and not self.stopped:
                heapq.heappop(self._timers)[2]()
            if not self.stopped:
                self._broker.release_due()

    def _wait_s(self) -> float:
        waits = [_MAX_WAIT_S]
        if self._timers:
            waits.append(self._timers[0][0] - time.monotonic())
        expiry = self._broker.next_expiry()
        if expiry is not None:
            waits.append(expiry)
        return max(0.0, min(waits))
