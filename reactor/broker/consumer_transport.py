"""The consuming connection to RabbitMQ: ``ConsumerTransport``, one method per AMQP callback.

It knows connections, channels, delivery tags and publisher confirms, and nothing about jobs or
outcomes: ``reactor.consume`` decides what happens to a message, this module carries it out on
the wire. Three parts, as in pika's asynchronous consumer example: the thread-safe face
(``ConsumerTransport``), the connection that reconnects (``Reconnector``: to the next of its
broker URLs, one per node of a cluster, with capped backoff), and the channel that declares,
consumes and settles (``channel.ConsumingChannel``, declared again on every new connection).

Why ``SelectConnection``: its IO loop owns the socket in one thread and keeps servicing
heartbeats, confirms and signals however long the store takes, while messages are processed on
a worker thread that may block (store retries, outages). The worker hands its decisions back
with ``add_callback_threadsafe``, so only the IO thread ever touches a channel. A
``BlockingConnection`` would have to interleave ``process_data_events`` with processing in one
thread and starve heartbeats while a store call blocks.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Mapping

import pika
from pika.adapters.select_connection import IOLoop

from .base import ConnectionFactory, Delivery
from .channel import ConsumingChannel, TransportState
from .endpoints import Endpoints
from .failures import Waits, capped_backoff, describe_close, is_fatal
from .topology import Topology

log = logging.getLogger(__name__)


class ConsumerTransport:
    """One consuming connection at a time, reconnecting with backoff.

    Public methods other than ``run`` may be called from any thread: they are queued onto the IO
    loop. ``on_delivery`` is called on the IO thread and must not block.
    """

    def __init__(self, url: "str | Endpoints", topology: Topology, queues: list[str],
                 prefetch: int, on_delivery: Callable[[Delivery], None], *,
                 reconnect_waits: Waits | None = None, name: str = "reactor consume"):
        # One URL or several (cluster nodes): a lost or refused connection moves to the next.
        self.endpoints = Endpoints.of(url, name)
        self.topology = topology
        self.prefetch = prefetch
        self.ioloop = IOLoop()
        self._state = TransportState()
        self._link = Reconnector(self.endpoints, self.ioloop, self._state,
                                 reconnect_waits or Waits(capped_backoff(0.5, 30.0)))
        self._channel = ConsumingChannel(topology, list(queues), prefetch, on_delivery,
                                         self.ioloop, self._state, self._link)
        self._link.channel = self._channel  # the channel each new connection opens

    @property
    def status(self) -> str:
        """starting, connecting, declaring, consuming, paused, reconnecting, stopping, stopped."""
        return self._state.status

    @property
    def error(self) -> str | None:
        """Why the transport gave up for good, if it did."""
        return self._state.error

    @property
    def generation(self) -> int:
        """The number of the current (or last) channel: 1 for the first."""
        return self._channel.ledger.generation

    @property
    def queues(self) -> list[str]:
        """The queues consumed."""
        return self._channel.subscriptions.queues

    @property
    def parameters(self) -> pika.URLParameters:
        """Connection parameters of the broker URL in use (or tried next)."""
        return self.endpoints.parameters

    @property
    def url(self) -> str:
        """The broker URL in use (or tried next), its password masked."""
        return self.endpoints.url

    # --- thread-safe API -------------------------------------------------------------------
    def run(self) -> None:
        """Connect and run the IO loop until ``close`` (blocks the calling thread)."""
        self.ioloop.add_callback_threadsafe(self._link.connect)
        self.ioloop.start()

    def threadsafe(self, fn: Callable, *args: Any) -> None:
        """Run ``fn(*args)`` on the IO thread."""
        self.ioloop.add_callback_threadsafe(functools.partial(fn, *args))

    def is_current(self, delivery: Delivery) -> bool:
        """True while the channel ``delivery`` arrived on is still open."""
        return self._channel.ledger.is_current(delivery)

    def ack_many(self, deliveries: list[Delivery],
                 after: Callable[[], None] | None = None, *, now: bool = True) -> None:
        """Acknowledge ``deliveries``: one multiple-ack where that settles nothing else (those
        whose channel is gone are left alone: the broker redelivers them); then run ``after``
        on the IO thread, whether or not the acks could be sent. ``now=False`` holds them back
        until ``send_acks`` (or ``close``).

        Acks requested while the IO thread has not yet sent earlier ones join them: one wake-up
        of the IO loop and one multiple-ack for all, instead of one each (each wake-up also
        hands the interpreter lock to the IO thread and back)."""
        if self._channel.ledger.request(deliveries, after, now):
            self.threadsafe(self._channel.send_acks)

    def send_acks(self, after: Callable[[], None] | None = None) -> None:
        """Send the acks that ``ack_many(now=False)`` held back; then run ``after`` on the IO
        thread, as ``ack_many`` does."""
        self.ack_many([], after)

    def forward(self, delivery: Delivery, queue: str, body: bytes,
                properties: Mapping[str, Any]) -> None:
        """Publish a copy to ``queue`` with a publisher confirm, then ack ``delivery``."""
        self.threadsafe(self._channel.forward, delivery, queue, body, dict(properties))

    def pause(self) -> None:
        """Stop taking deliveries while the store is down; unacked ones stay with us."""
        self.threadsafe(self._channel.pause)

    def resume(self) -> None:
        """Take deliveries again after ``pause``."""
        self.threadsafe(self._channel.resume)

    def begin_stop(self, grace_s: float) -> None:
        """Take no new deliveries; close within ``grace_s`` even if work is still in flight."""
        self.threadsafe(self._begin_stop, grace_s)

    def close(self) -> None:
        """Send held-back acks, close once pending confirms are settled, then end ``run``."""
        self.threadsafe(self._channel.close)

    def every(self, seconds: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the IO thread every ``seconds`` for as long as the loop runs."""
        def tick() -> None:
            try:
                fn()
            except Exception:  # noqa: BLE001 - a periodic task must not kill the IO loop
                log.exception("periodic task failed")
            self.ioloop.call_later(seconds, tick)
        self.threadsafe(tick)

    def _begin_stop(self, grace_s: float) -> None:
        if self._state.stopping:
            return
        self._state.stopping = True
        self._link.cancel_reconnect()
        self._state.status = "stopping"
        log.info("stopping: finishing the message in progress (at most %gs)", grace_s)
        # No basic.cancel: on a single-active-consumer queue it would hand the queue to a
        # standby consumer while we still hold earlier messages. Closing the channel returns
        # them all in order, and only then does the standby take over.
        self.ioloop.call_later(grace_s, self._channel.force_close)
        if self._link.connection is None:
            self._link.finish()


class Reconnector:
    """The transport's connection, one at a time: connect, and on a loss or failure connect
    again (next URL first) after a capped backoff, until stopped or refused for good."""

    channel: ConsumingChannel

    def __init__(self, endpoints: Endpoints, ioloop: IOLoop, state: TransportState,
                 waits: Waits):
        self.endpoints = endpoints
        self.ioloop = ioloop
        self.state = state
        self.waits = waits
        self.connection: pika.SelectConnection | None = None
        self._reconnect_timer: Any = None

    @property
    def url(self) -> str:
        """The broker URL in use (or tried next), its password masked."""
        return self.endpoints.url

    def connect(self) -> None:
        """Open a connection to the current URL (or finish, if stopping meanwhile)."""
        self._reconnect_timer = None
        if self.state.stopping:
            self.finish()
            return
        self.state.status = "connecting"
        log.info("connecting to %s", self.url)
        self.connection = pika.SelectConnection(
            self.endpoints.parameters, on_open_callback=self.on_connection_open,
            on_open_error_callback=self.on_connection_open_error,
            on_close_callback=self.on_connection_closed, custom_ioloop=self.ioloop)

    def on_connection_open(self, connection: pika.SelectConnection) -> None:
        """Open our one channel."""
        log.info("connected to %s", self.url)
        self.channel.open(connection)

    def on_connection_open_error(self, connection: Any, error: BaseException) -> None:
        """The broker could not be reached or refused us: retry later, or give up if fatal."""
        self.connection = None
        if self.state.stopping:
            self.finish()
        elif is_fatal(error):
            self.give_up(f"broker {self.url} refused the connection: {describe_close(error)}")
        else:
            why = f"cannot connect to {self.url}: {describe_close(error)}"
            # Another node may answer at once; wait only once every URL failed in a row.
            self._schedule_reconnect(why, wait=self.endpoints.failed())

    def on_connection_closed(self, connection: Any, reason: BaseException) -> None:
        """Closed by us (finish) or lost (reconnect with backoff)."""
        self.connection = None
        self.channel.gone()
        if self.state.closing or self.state.stopping:
            self.finish()
        elif is_fatal(reason) and self.state.status == "declaring":
            self.give_up(f"broker {self.url} refused the topology: {describe_close(reason)}")
        else:
            why = f"connection to {self.url} lost: {describe_close(reason)}"
            self.endpoints.failed()  # its node may be gone: the next URL first
            self._schedule_reconnect(why)

    def _schedule_reconnect(self, why: str, wait: bool = True) -> None:
        delay = self.waits.next() if wait else 0.0
        self.state.status = "reconnecting"
        if len(self.endpoints) > 1:
            why += f"; next: {self.url}"
        log.warning("%s; reconnecting in %.1fs", why, delay)
        self._reconnect_timer = self.ioloop.call_later(delay, self.connect)

    def cancel_reconnect(self) -> None:
        """Stopping: no reconnect is to come."""
        if self._reconnect_timer is not None:
            self.ioloop.remove_timeout(self._reconnect_timer)
            self._reconnect_timer = None

    def worked(self) -> None:
        """The channel is ready: this URL works, and the next loss waits the shortest time."""
        self.endpoints.worked()
        self.waits.reset()

    def give_up(self, error: str) -> None:
        """Stop for good with ``error`` (closing the connection first if it is open)."""
        self.state.error = error
        log.error("%s", error)
        self.state.stopping = True
        if self.connection is not None and self.connection.is_open:
            self.connection.close()
        else:
            self.finish()

    def drop(self) -> None:
        """Close the connection (``on_connection_closed`` reconnects or finishes)."""
        if self.connection is not None and self.connection.is_open:
            self.connection.close()

    def close_or_finish(self) -> None:
        """Close the connection if open (``on_connection_closed`` then finishes), or finish if
        there is none."""
        if self.connection is not None and self.connection.is_open:
            self.connection.close()
        elif self.connection is None:
            self.finish()

    def finish(self) -> None:
        """Stopped: end the IO loop (and with it ``run``)."""
        self.state.status = "stopped"
        self.ioloop.stop()


def connection_factory(url: "str | Endpoints", topology: Topology, *,
                       name: str = "reactor consume") -> ConnectionFactory:
    """A factory of ``ConsumerTransport``s on ``url`` and ``topology``, for the consumer."""
    def connect(queues: list[str], prefetch: int,
                on_delivery: Callable[[Delivery], None]) -> ConsumerTransport:
        return ConsumerTransport(url, topology, queues, prefetch, on_delivery, name=name)
    return connect
