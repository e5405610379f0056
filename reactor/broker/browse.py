"""Browsing and re-driving a queue for ``reactor deadletters``.

Browsing uses ``basic.get`` with manual
acknowledgement: every message taken stays unacked (so the broker hands out each one only
once per pass) and is returned with ``basic.nack(requeue)`` at the end, in its original
place. Re-driving publishes the chosen ones with a publisher confirm and acks each only after
its confirm; whatever is not chosen, or fails, is nacked back. If the connection drops
half-way the broker requeues every unacked message by itself, so a message is never lost; at
worst one that was confirmed but whose ack was lost is both re-driven and still in the queue
(its message id makes the second copy a duplicate for the reactor).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pika.exceptions

from ..domain.errors import BrokerError
from .confirming import open_blocking
from .endpoints import Endpoints
from .failures import describe_close
from .properties import basic_properties, properties_dict
from .topology import Topology, declare_blocking


@dataclass(frozen=True)
class QueuedMessage:
    """One message taken from a queue (still unacked while the pass runs)."""

    position: int                # 0 = the head of the queue at the time of the pass
    body: bytes
    properties: Mapping[str, Any]
    routing_key: str
    exchange: str
    redelivered: bool
    tag: int = field(repr=False, default=0)

    @property
    def headers(self) -> Mapping[str, Any]:
        return self.properties.get("headers") or {}


@dataclass(frozen=True)
class Redrive:
    """Publish message ``position`` again to ``exchange``/``routing_key`` with ``properties``."""

    position: int
    exchange: str
    routing_key: str
    properties: Mapping[str, Any]


@dataclass
class RedriveResult:
    """What a re-drive pass did: positions re-driven (and acked), and failures with why."""

    looked_at: int = 0
    redriven: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)


def _blocking_channel(url: str, name: str) -> tuple[Any, Any]:
    """A connection (to the first of the URLs that answers, in a shuffled order) and a channel."""
    endpoints = Endpoints(url, name)
    connection = open_blocking(endpoints)
    try:
        return connection, connection.channel()
    except pika.exceptions.AMQPError as exc:
        _close_connection(connection)
        raise BrokerError(f"cannot open a channel on {endpoints.url}: "
                          f"{describe_close(exc)}") from None


def _close_connection(connection: Any) -> None:
    try:
        if connection.is_open:
            connection.close()  # also returns anything still unacked to its queue
    except pika.exceptions.AMQPError:
        pass


def _take_unacked(channel: Any, queue: str, limit: int) -> list[QueuedMessage]:
    """Take up to ``limit`` messages (unacked), no more than the queue held when we began."""
    try:
        count = channel.queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise BrokerError(f"queue {queue!r}: {describe_close(exc)}") from None
    out: list[QueuedMessage] = []
    for position in range(min(count, limit)):
        method, props, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break
        out.append(QueuedMessage(position, bytes(body), properties_dict(props),
                                 method.routing_key, method.exchange, bool(method.redelivered),
                                 method.delivery_tag))
    return out


def _return_unacked(channel: Any, messages: Sequence[QueuedMessage]) -> None:
    # In delivery order, so the broker puts each back where it was.
    for message in sorted(messages, key=lambda m: m.tag):
        channel.basic_nack(message.tag, multiple=False, requeue=True)


def browse(url: str, queue: str, limit: int) -> tuple[list[QueuedMessage], int]:
    """Up to ``limit`` messages of ``queue`` (all left in place), and the queue's depth."""
    connection, channel = _blocking_channel(url, "reactor deadletters")
    try:
        taken = _take_unacked(channel, queue, limit)
        depth = channel.queue_declare(queue, passive=True).method.message_count + len(taken)
        _return_unacked(channel, taken)
        return taken, depth
    except pika.exceptions.AMQPError as exc:
        raise BrokerError(f"browsing {queue!r} failed: {describe_close(exc)}; the broker "
                          "returns every message to the queue") from None
    finally:
        _close_connection(connection)


def redrive(url: str, queue: str, topology: Topology, limit: int,
            choose: Callable[[list[QueuedMessage]], list[Redrive]]) -> RedriveResult:
    """Take up to ``limit`` messages of ``queue``, publish the ones ``choose`` picks (with a
    confirm, then ack each), and return the rest untouched. An exception from ``choose``
    returns every message and propagates: nothing changes."""
    connection, channel = _blocking_channel(url, "reactor deadletters")
    result = RedriveResult()
    try:
        declare_blocking(channel, topology)  # the exchange must exist to route
        channel.confirm_delivery()
        taken = _take_unacked(channel, queue, limit)
        result.looked_at = len(taken)
        try:
            plan = choose(taken)
        except BaseException:
            _return_unacked(channel, taken)
            raise
        by_position = {m.position: m for m in taken}
        settled: set[int] = set()
        for step in plan:
            message = by_position[step.position]
            why = _publish_confirmed(channel, step, message.body)
            if why is None:
                channel.basic_ack(message.tag)
                settled.add(message.position)
                result.redriven.append(message.position)
            else:
                result.failed.append((message.position, why))
                if not channel.is_open:
                    return result  # the broker requeues everything still unacked
        _return_unacked(channel, [m for m in taken if m.position not in settled])
        return result
    except pika.exceptions.AMQPError as exc:
        raise BrokerError(f"re-driving from {queue!r} failed: {describe_close(exc)}; messages "
                          "not yet confirmed stay in the queue") from None
    finally:
        _close_connection(connection)


def _publish_confirmed(channel: Any, step: Redrive, body: bytes) -> str | None:
    """Publish one message and wait for its confirm; None on success, else why not."""
    try:
        channel.basic_publish(step.exchange, step.routing_key, body,
                              basic_properties(step.properties), mandatory=True)
    except pika.exceptions.UnroutableError:
        return f"exchange {step.exchange!r} routed it to no queue"
    except pika.exceptions.NackError:
        return "the broker refused it (negative confirm)"
    except pika.exceptions.AMQPError as exc:
        return f"publishing failed: {describe_close(exc)}"
    return None
