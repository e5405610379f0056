"""The parts of the memory broker that hold messages: queues (with what their declaration
arguments ask of them), exchanges with their bindings, and RabbitMQ's dead-letter headers."""
from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from .topology import HASH_EXCHANGE_TYPE


@dataclass
class StoredMessage:
    """One message in a queue (or held unacked by a connection)."""

    seq: int                     # order of arrival in its queue: requeued ones go back by it
    body: bytes
    properties: dict             # as a delivery shows them, ``headers`` always a dict
    exchange: str
    routing_key: str
    redelivered: bool = False
    returns: int = 0             # times returned to the queue unsettled (quorum's count)
    expires_at: float | None = None


@dataclass
class MemoryQueue:
    """A queue and what its declaration arguments ask of it."""

    name: str
    arguments: Mapping[str, Any]
    ready: deque = field(default_factory=deque)
    consumers: list = field(default_factory=list)  # subscribed channels, oldest first
    turn: int = 0                                  # round robin among competing consumers

    @property
    def quorum(self) -> bool:
        """True for a quorum queue (it counts redeliveries)."""
        return self.arguments.get("x-queue-type") == "quorum"

    @property
    def single_active(self) -> bool:
        """True if only the oldest subscriber gets messages (partition queues)."""
        return bool(self.arguments.get("x-single-active-consumer"))

    @property
    def ttl_s(self) -> float | None:
        """How long a message waits before it expires (dead-lettered), if it does."""
        ttl = self.arguments.get("x-message-ttl")
        return None if ttl is None else ttl / 1000

    @property
    def dead_letter_to(self) -> str | None:
        """The queue a dead-lettered message goes to (through the default exchange)."""
        return self.arguments.get("x-dead-letter-routing-key")

    @property
    def delivery_limit(self) -> int | None:
        """Returns a quorum queue allows before it dead-letters a message."""
        return self.arguments.get("x-delivery-limit") if self.quorum else None

    def expired(self, now: float) -> list[StoredMessage]:
        """Take the messages at the head whose TTL ran out by ``now``."""
        out = []
        while self.ready and self.ready[0].expires_at is not None \
                and self.ready[0].expires_at <= now:
            out.append(self.ready.popleft())
        return out

    def next_expiry(self) -> float | None:
        """When the message at the head expires, if it does."""
        return self.ready[0].expires_at if self.ready else None

    def take_back(self, messages: list[StoredMessage]) -> list[StoredMessage]:
        """Unsettled ``messages`` return (a channel closed): to their old places, marked
        redelivered. Returns those past the delivery limit, for dead-lettering instead."""
        back, over = [], []
        for message in messages:
            message.redelivered = True
            message.returns += 1
            limit = self.delivery_limit
            (over if limit is not None and message.returns > limit else back).append(message)
        self.ready = deque(sorted([*back, *self.ready], key=lambda m: m.seq))
        return over

    def taker(self) -> Any:
        """The subscriber to hand the next message to (round robin), or None if none has room
        in its prefetch window; a single-active-consumer queue only has its oldest."""
        consumers = self.consumers[:1] if self.single_active else self.consumers
        for offset in range(len(consumers)):
            candidate = consumers[(self.turn + offset) % len(consumers)]
            if candidate.has_room(self.name):
                self.turn = (self.turn + offset + 1) % len(consumers)
                return candidate
        return None


class Exchanges:
    """Exchanges and their bindings, routing as RabbitMQ does: fanout copies to every bound
    destination, consistent-hash sends one routing key always to the same one of its queues
    (equal weights), the default exchange "" to the queue named by the routing key."""

    def __init__(self) -> None:
        self.types: dict[str, str] = {}
        self._bindings: dict[str, list[tuple[str, str]]] = {}  # exchange -> (kind, name)

    def declare(self, name: str, exchange_type: str) -> None:
        """Declare exchange ``name``."""
        self.types[name] = exchange_type

    def bind(self, source: str, kind: str, destination: str) -> None:
        """Bind a queue or an exchange (``kind``) to exchange ``source``."""
        self._bindings.setdefault(source, []).append((kind, destination))

    def route(self, exchange: str, routing_key: str, queues: Mapping[str, Any]) -> list[str]:
        """The queues a message published to ``exchange`` with ``routing_key`` lands in."""
        if exchange == "":
            return [routing_key] if routing_key in queues else []
        bound = self._bindings.get(exchange, [])
        if self.types.get(exchange) == HASH_EXCHANGE_TYPE and bound:
            digest = hashlib.blake2b(routing_key.encode(), digest_size=8).digest()
            bound = [bound[int.from_bytes(digest, "big") % len(bound)]]
        out: list[str] = []
        for kind, name in bound:
            out += [name] if kind == "queue" else self.route(name, routing_key, queues)
        return out


def record_death(headers: dict, reason: str, queue: str, exchange: str,
                 routing_key: str) -> None:
    """Add one death to ``headers`` as RabbitMQ does: ``x-death`` (one entry per queue and
    reason, counted, the latest first) and the ``x-first-death-*`` headers."""
    deaths = [dict(d) for d in headers.get("x-death") or []]
    same = next((d for d in deaths if d.get("queue") == queue and d.get("reason") == reason),
                None)
    if same is None:
        same = {"count": 0, "reason": reason, "queue": queue, "exchange": exchange,
                "routing-keys": [routing_key]}
    else:
        deaths.remove(same)
    same["count"] += 1
    same["time"] = datetime.now(timezone.utc).replace(microsecond=0)
    headers["x-death"] = [same, *deaths]
    headers.setdefault("x-first-death-exchange", exchange)
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-reason", reason)
