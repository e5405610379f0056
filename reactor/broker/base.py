"""What the consumer needs of a broker: a delivery, and a consuming connection to settle it on.

RabbitMQ's implementation is ``consumer_transport.ConsumerTransport``, and ``memory`` has one
for tests with the same surface (the consumer never builds its connection itself, it is handed
a factory).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One message as delivered: body, where it came from, and the tag to settle it with.

    ``generation`` numbers the channel the delivery arrived on: a tag is only meaningful on
    that channel, so a delivery from an older generation is never acked.
    """

    body: bytes
    tag: int
    generation: int
    queue: str
    exchange: str
    routing_key: str
    redelivered: bool
    properties: Mapping[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> Mapping[str, Any]:
        return self.properties.get("headers") or {}

    @property
    def message_id(self) -> str | None:
        value = self.properties.get("message_id")
        return str(value) if value not in (None, "") else None


class ConsumingConnection(Protocol):
    """One consuming connection: deliveries go to the callback given to the factory, on the
    connection's own thread; every method but ``run`` may be called from any thread."""

    status: str  # starting, connecting, declaring, consuming, paused, reconnecting, stopping, stopped
    error: str | None    # set when the connection gave up for good

    @property
    def url(self) -> str:
        """The broker address in use, its password masked."""

    def run(self) -> None:
        """Connect and deliver until ``close`` (blocks the calling thread)."""

    def is_current(self, delivery: Delivery) -> bool:
        """True while the channel ``delivery`` arrived on is still open."""

    def ack_many(self, deliveries: list[Delivery], after: Callable[[], None] | None = None, *,
                 now: bool = True) -> None:
        """Acknowledge ``deliveries`` (``now=False``: hold until ``send_acks``), then ``after``."""

    def send_acks(self, after: Callable[[], None] | None = None) -> None:
        """Send held-back acks, then run ``after``."""

    def forward(self, delivery: Delivery, queue: str, body: bytes,
                properties: Mapping[str, Any]) -> None:
        """Publish a copy to ``queue`` with a publisher confirm, then ack ``delivery``."""

    def pause(self) -> None:
        """Stop taking deliveries; unacked ones stay with us."""

    def resume(self) -> None:
        """Take deliveries again after ``pause``."""

    def begin_stop(self, grace_s: float) -> None:
        """Take no new deliveries; close within ``grace_s``."""

    def close(self) -> None:
        """Send held-back acks, settle pending confirms, end ``run``."""

    def every(self, seconds: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the connection's thread every ``seconds`` while it runs."""


# (queues, prefetch, on_delivery) -> a connection consuming those queues.
ConnectionFactory = Callable[[list[str], int, Callable[[Delivery], None]], ConsumingConnection]


def run_after(after: Callable[[], None] | None) -> None:
    """Run a connection's settle callback; its failure is logged, never allowed to end the loop."""
    if after is None:
        return
    try:
        after()
    except Exception:  # noqa: BLE001 - bookkeeping (counts, logs) must not stop the IO loop
        log.exception("after settling deliveries")
