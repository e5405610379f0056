"""A consuming connection to a ``MemoryBroker``, with the surface and the observable behaviour
of ``ConsumerTransport`` (``reactor.broker.base.ConsumingConnection``).

Deliveries reach ``on_delivery`` on the thread that calls ``run``; every other method may be
called from any thread and is carried out on that one, in order, as the transport's IO loop
does. Like the transport's, the connection's channel has a ``generation``: when it closes or is
lost (``lose``), the messages it holds unsettled go back to their queues, marked redelivered,
and the deliveries of that generation can no longer be settled.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .base import Delivery, run_after
from .memory_channel import CallbackLoop, MemoryChannel

if TYPE_CHECKING:
    from .memory import MemoryBroker

log = logging.getLogger(__name__)

Request = tuple[list[Delivery], "Callable[[], None] | None"]


class MemoryConnection:
    """One consuming connection to a memory broker (see the module docstring)."""

    def __init__(self, broker: "MemoryBroker", queues: list[str], prefetch: int,
                 on_delivery: Callable[[Delivery], None], name: str = "memory"):
        self.status = "starting"
        self.error: str | None = None
        self.on_delivery = on_delivery
        self._broker = broker
        self._lock = broker.lock
        self._name = name
        self._loop = CallbackLoop(broker)
        self._channel = MemoryChannel(broker, queues, prefetch, self._loop.inbox)
        self._held: list[Request] = []
        self._paused = self._stopping = self._closing = False

    @property
    def url(self) -> str:
        """Where the connection goes (nothing secret in it)."""
        return f"memory://{self._name}"

    @property
    def generation(self) -> int:
        """The number of the current (or last) channel: 1 for the first."""
        return self._channel.generation

    def holding(self, queue: str) -> int:
        """How many deliveries from ``queue`` this connection holds unsettled."""
        return self._channel.holding(queue)

    # --- the ConsumingConnection surface ---------------------------------------------------
    def run(self) -> None:
        """Connect and deliver until ``close`` (blocks the calling thread)."""
        self._loop.post(self._connect)
        self._loop.run(self._deliver)

    def _deliver(self, delivery: Delivery) -> None:
        if self.is_current(delivery):  # else it went back to its queue already
            self.on_delivery(delivery)

    def is_current(self, delivery: Delivery) -> bool:
        """True while the channel ``delivery`` arrived on is still open."""
        with self._lock:
            return self._channel.is_current(delivery)

    def ack_many(self, deliveries: list[Delivery], after: Callable[[], None] | None = None,
                 *, now: bool = True) -> None:
        """Acknowledge ``deliveries`` (``now=False``: hold until ``send_acks``), then ``after``."""
        with self._lock:
            self._held.append((list(deliveries), after))
        if now:
            self._loop.post(self._send_acks)

    def send_acks(self, after: Callable[[], None] | None = None) -> None:
        """Send held-back acks, then run ``after``."""
        self.ack_many([], after)

    def forward(self, delivery: Delivery, queue: str, body: bytes,
                properties: Mapping[str, Any]) -> None:
        """Publish a copy to ``queue`` (confirmed at once), then ack ``delivery``."""
        self._loop.post(lambda: self._forward(delivery, queue, body, dict(properties)))

    def pause(self) -> None:
        """Stop taking deliveries; unacked ones stay with us."""
        self._loop.post(self._pause)

    def resume(self) -> None:
        """Take deliveries again after ``pause``."""
        self._loop.post(self._resume)

    def begin_stop(self, grace_s: float) -> None:
        """Take no new deliveries; close within ``grace_s``."""
        self._loop.post(lambda: self._begin_stop(grace_s))

    def close(self) -> None:
        """Send held-back acks, then end ``run`` (unsettled messages go back to their queues)."""
        self._loop.post(self._close)

    def every(self, seconds: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the connection's thread every ``seconds`` while it runs."""
        def tick() -> None:
            try:
                fn()
            except Exception:  # noqa: BLE001 - a periodic task must not end the loop
                log.exception("periodic task failed")
            self._loop.call_later(seconds, tick)
        self._loop.post(tick)

    # --- faults to simulate ----------------------------------------------------------------
    def lose(self) -> None:
        """Simulate a lost connection: what it holds goes back to the queues, marked
        redelivered, and it connects again with a new generation (unless stopping)."""
        with self._lock:
            if not self._channel.open:
                return
            self._channel.gone()
            if not self._stopping:
                self.status = "reconnecting"
        log.warning("connection to %s lost (simulated); reconnecting", self.url)
        self._loop.post(self._reconnect)

    def refuse(self, error: str) -> None:
        """Simulate the broker refusing us for good: ``error`` is set and ``run`` ends."""
        def give_up() -> None:
            self.error = error
            log.error("%s", error)
            self._stopping = True
            self._finish()
        self._loop.post(give_up)

    # --- on the connection's thread --------------------------------------------------------
    def _connect(self) -> None:
        if self._stopping:
            self._finish()
            return
        with self._lock:
            self.status = "declaring"
            self._channel.opened()
            if self._paused and not self._broker.topology.partitions:
                self.status = "paused"
            else:
                self._channel.subscribe(self.url)
                self.status = "paused" if self._paused else "consuming"
            self._broker.dispatch()

    def _reconnect(self) -> None:
        if self._loop.stopped:
            return
        if self._stopping or self._closing:
            self._finish()
        else:
            self._connect()

    def _channel_error(self, why: str) -> None:
        # As RabbitMQ closes a channel on a protocol error: the transport opens a new one.
        log.warning("channel closed: %s", why)
        self.lose()

    def _send_acks(self) -> None:
        with self._lock:
            requests, self._held = self._held, []
            unknown = self._channel.ack([d for ds, _ in requests for d in ds])
        if unknown:
            self._channel_error(f"406 PRECONDITION_FAILED - unknown delivery tag {unknown[0]}")
        if self._closing:
            self._finish()
        for _, after in requests:
            run_after(after)

    def _forward(self, delivery: Delivery, queue: str, body: bytes, properties: dict) -> None:
        with self._lock:
            error = self._channel.forward(delivery, queue, body, properties)
        if error is not None:
            self._channel_error(error)

    def _pause(self) -> None:
        if self._paused:
            return
        self._paused = True
        if self.status == "consuming":
            self.status = "paused"
            log.warning("paused: not taking deliveries until the store answers")
            if not self._broker.topology.partitions:
                with self._lock:
                    self._channel.unsubscribe()
            # Partition queues keep their single active consumer, as the transport does.

    def _resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self.status == "paused" and not self._stopping and self._channel.open:
            with self._lock:
                self._channel.subscribe(self.url)
                self.status = "consuming"
                self._broker.dispatch()
            log.info("resumed consuming")

    def _begin_stop(self, grace_s: float) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.status = "stopping"
        log.info("stopping: finishing the message in progress (at most %gs)", grace_s)
        # Subscriptions stay, as on the transport: closing returns what we hold, in order.
        self._loop.call_later(grace_s, self._close)
        if not self._channel.open:
            self._finish()

    def _close(self) -> None:
        self._stopping = True
        self._closing = True
        self._send_acks()

    def _finish(self) -> None:
        with self._lock:
            if self._channel.open:
                self._channel.gone()
            self.status = "stopped"
            self._loop.stopped = True
