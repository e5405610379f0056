"""An in-memory broker for tests: the topology's queues, exchanges and bindings, held in this
process, with the semantics the consumer relies on, and consuming connections with the surface
of ``ConsumerTransport`` (``memory_connection.MemoryConnection``).

The broker is built from the same ``Topology.declarations()`` that RabbitMQ receives, and reads
their arguments as RabbitMQ does: a fanout exchange copies to every bound queue, the
consistent-hash exchange of the partitioned layout sends one routing key always to one queue, a
queue with ``x-message-ttl`` dead-letters each message when it expires (the delayed-retry queues
send it back to their main queue that way), a single-active-consumer queue delivers to its
oldest subscriber only, and a quorum queue counts redeliveries (``x-delivery-count``) and
dead-letters a message returned more than ``x-delivery-limit`` times. Dead-lettering adds
RabbitMQ's ``x-death`` headers. Persistence is irrelevant here.

Time runs on ``clock`` (``time.monotonic`` unless given); ``advance`` moves it on and
``release_delayed`` lets every waiting message expire at once, for tests that do not sleep.
"""
from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable, Mapping

from ..domain.errors import BrokerError
from .base import ConnectionFactory, Delivery
from .browse import QueuedMessage
from .memory_connection import MemoryConnection
from .memory_queues import Exchanges, MemoryQueue, StoredMessage, record_death
from .properties import published_values
from .topology import Topology


class MemoryBroker:
    """The queues of one topology, in memory: publish, consume, inspect (thread-safe)."""

    def __init__(self, topology: Topology, clock: Callable[[], float] = time.monotonic):
        self.topology = topology
        self.lock = threading.RLock()  # guards every queue and every connection's channel
        self._clock = clock
        self._skew = 0.0
        self._seq = itertools.count(1)
        self._exchanges = Exchanges()
        self._queues: dict[str, MemoryQueue] = {}
        self._connections: list[MemoryConnection] = []
        for method, kwargs in topology.declarations():
            self._declare(method, kwargs)

    def _declare(self, method: str, kwargs: dict) -> None:
        if method == "exchange_declare":
            self._exchanges.declare(kwargs["exchange"], kwargs["exchange_type"])
        elif method == "queue_declare":
            self._queues[kwargs["queue"]] = MemoryQueue(kwargs["queue"],
                                                        dict(kwargs.get("arguments") or {}))
        elif method == "queue_bind":
            self._exchanges.bind(kwargs["exchange"], "queue", kwargs["queue"])
        elif method == "exchange_bind":
            self._exchanges.bind(kwargs["source"], "exchange", kwargs["destination"])
        else:
            raise ValueError(f"the memory broker cannot declare {method!r}")

    # --- time ------------------------------------------------------------------------------
    def now(self) -> float:
        """The broker's clock (seconds), ``advance`` included."""
        return self._clock() + self._skew

    def advance(self, seconds: float) -> None:
        """Move the broker's clock on by ``seconds``: messages whose TTL ran out expire."""
        with self.lock:
            self._skew += seconds
            self.release_due()

    def release_delayed(self) -> None:
        """Let every message waiting in a queue with a TTL expire now."""
        with self.lock:
            for queue in self._queues.values():
                for message in queue.ready if queue.ttl_s is not None else ():
                    message.expires_at = float("-inf")
            self.release_due()

    def release_due(self) -> None:
        """Dead-letter every message whose TTL ran out, then deliver what can be delivered."""
        with self.lock:
            now = self.now()
            for queue in self._queues.values():
                for message in queue.expired(now):
                    self.dead_letter(message, queue, "expired")
            self.dispatch()

    def next_expiry(self) -> float | None:
        """Seconds (broker clock) until the next message expires, if any waits."""
        with self.lock:
            due = [d for d in (q.next_expiry() for q in self._queues.values()) if d is not None]
            return max(0.0, min(due) - self.now()) if due else None

    # --- messages in -----------------------------------------------------------------------
    def publish(self, target: str, routing_key: str, body: bytes,
                properties: Mapping[str, Any] | None = None) -> None:
        """Publish to exchange ``target`` (routed as RabbitMQ would; "" is the default
        exchange, ``routing_key`` naming the queue) or straight into queue ``target``;
        BrokerError if no queue takes it (as an unroutable mandatory publish)."""
        props = published_values(properties or {})
        with self.lock:
            self.release_due()
            if target in self._queues:
                targets, exchange, routing_key = [target], "", routing_key or target
            elif target in self._exchanges.types or target == "":
                targets = self._exchanges.route(target, routing_key, self._queues)
                exchange = target
            else:
                raise BrokerError(f"no exchange or queue named {target!r}")
            if not targets:
                raise BrokerError(f"no queue is bound to exchange {target!r}: the message was "
                                  "returned unrouted")
            for name in targets:
                self.put(name, body, props, exchange, routing_key)
            self.dispatch()

    def put(self, name: str, body: bytes, properties: Mapping[str, Any], exchange: str = "",
            routing_key: str | None = None) -> None:
        """Put a message at the tail of queue ``name``, as published to ``exchange`` with
        ``routing_key`` (default: the default exchange, routed by the queue's name)."""
        message = StoredMessage(0, bytes(body), _copy(properties), exchange,
                                name if routing_key is None else routing_key)
        queue = self._queues[name]
        with self.lock:
            message.seq = next(self._seq)
            message.expires_at = None if queue.ttl_s is None else self.now() + queue.ttl_s
            queue.ready.append(message)

    def dead_letter(self, message: StoredMessage, queue: MemoryQueue, reason: str) -> None:
        """Send ``message`` on from ``queue`` as RabbitMQ dead-letters it (``x-death``), or
        drop it if the queue names no target."""
        target = queue.dead_letter_to
        if target is None or target not in self._queues:
            return
        headers = dict(message.properties.get("headers") or {})
        record_death(headers, reason, queue.name, message.exchange, message.routing_key)
        self.put(target, message.body, {**message.properties, "headers": headers})

    def returned(self, queue: MemoryQueue, messages: list[StoredMessage]) -> None:
        """Unsettled ``messages`` come back to ``queue`` (a channel closed)."""
        with self.lock:
            for message in queue.take_back(messages):
                self.dead_letter(message, queue, "delivery_limit")

    # --- consuming -------------------------------------------------------------------------
    def connection_factory(self, name: str = "memory") -> ConnectionFactory:
        """A factory of consuming connections to this broker (``ConnectionFactory``)."""
        def connect(queues: list[str], prefetch: int,
                    on_delivery: Callable[[Delivery], None]) -> MemoryConnection:
            unknown = [q for q in queues if q not in self._queues]
            if unknown:
                raise BrokerError(f"no queue named {', '.join(map(repr, unknown))}")
            connection = MemoryConnection(self, list(queues), prefetch, on_delivery, name)
            with self.lock:
                self._connections.append(connection)
            return connection
        return connect

    def queue(self, name: str) -> MemoryQueue:
        """Queue ``name`` (KeyError if the topology has none of that name)."""
        return self._queues[name]

    def dispatch(self) -> None:
        """Hand ready messages to subscribers with room in their prefetch window."""
        with self.lock:
            for queue in self._queues.values():
                while queue.ready:
                    taker = queue.taker()
                    if taker is None:
                        break
                    taker.take(queue, queue.ready.popleft())

    def drop_connections(self) -> None:
        """Every open connection is lost at once (as when the broker restarts)."""
        for connection in self.connections:
            connection.lose()

    # --- inspection ------------------------------------------------------------------------
    @property
    def queue_names(self) -> list[str]:
        """Every queue of the topology."""
        return list(self._queues)

    @property
    def connections(self) -> list[MemoryConnection]:
        """Every connection made by this broker's factories, oldest first."""
        with self.lock:
            return list(self._connections)

    def messages(self, queue: str) -> list[QueuedMessage]:
        """The ready messages of ``queue``, head first, left in place (as ``browse``)."""
        with self.lock:
            self.release_due()
            return [QueuedMessage(n, m.body, _copy(m.properties), m.routing_key, m.exchange,
                                  m.redelivered)
                    for n, m in enumerate(self._queues[queue].ready)]

    def depth(self, queue: str) -> int:
        """How many messages of ``queue`` are ready (not delivered, or returned)."""
        with self.lock:
            self.release_due()
            return len(self._queues[queue].ready)

    def unacked(self, queue: str) -> int:
        """How many messages of ``queue`` connections hold unsettled."""
        with self.lock:
            return sum(c.holding(queue) for c in self._connections)

    def counts(self) -> dict[str, int]:
        """Ready messages per queue."""
        with self.lock:
            self.release_due()
            return {name: len(q.ready) for name, q in self._queues.items()}


def _copy(properties: Mapping[str, Any]) -> dict:
    return {**properties, "headers": dict(properties.get("headers") or {})}
