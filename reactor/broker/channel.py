"""The consumer transport's channel: declare the topology, switch on confirms, consume, settle,
pause; one method per AMQP callback, all on the transport's IO thread.

The channel reports up to its connection (``Link``) and never decides the connection's fate
itself: the connection reconnects or finishes. ``TransportState`` holds what both read.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .base import Delivery, run_after
from .failures import describe_close, is_fatal
from .properties import properties_dict
from .settling import ChannelLedger
from .subscriptions import Subscriptions
from .topology import Topology, declare_kwargs

log = logging.getLogger(__name__)


@dataclass
class TransportState:
    """Where the transport is (``status``), why it gave up, and what it was asked to do."""

    status: str = "starting"
    error: str | None = None   # set when the transport gave up for good
    paused: bool = False
    stopping: bool = False     # take nothing new, close once settled (or when the grace ends)
    closing: bool = False      # close as soon as nothing is pending


class Link(Protocol):
    """What the channel asks of its connection."""

    url: str

    def worked(self) -> None:
        """The channel is ready: the broker URL in use works."""

    def give_up(self, error: str) -> None:
        """Stop for good with ``error``."""

    def drop(self) -> None:
        """Close the connection (its close callback reconnects or finishes)."""

    def close_or_finish(self) -> None:
        """Close the connection if open, or finish if there is none."""


class ConsumingChannel:
    """The one channel of the current connection (none between connections)."""

    def __init__(self, topology: Topology, queues: list[str], prefetch: int,
                 on_delivery: Callable[[Delivery], None], ioloop: Any, state: TransportState,
                 link: Link):
        self.topology = topology
        self.prefetch = prefetch
        self.on_delivery = on_delivery
        self.state = state
        self.link = link
        self.ledger = ChannelLedger()
        self.subscriptions = Subscriptions(queues, ioloop, self.on_message)

    # --- opening ---------------------------------------------------------------------------
    def open(self, connection: Any) -> None:
        """Open the channel on a new connection."""
        connection.channel(on_open_callback=self.on_channel_open)

    def on_channel_open(self, channel: Any) -> None:
        """Watch the channel, then declare the topology one step at a time."""
        self.ledger.opened(channel)
        self.subscriptions.opened(channel)
        channel.add_on_close_callback(self.on_channel_closed)
        channel.add_on_cancel_callback(self.on_consumer_cancelled)
        channel.add_on_return_callback(self.on_message_returned)
        self.state.status = "declaring"
        self._declare(channel, list(self.topology.declarations()))

    def _declare(self, channel: Any, steps: list[tuple[str, dict]], _frame: Any = None) -> None:
        if channel is not self.ledger.channel or not channel.is_open:
            return
        if not steps:
            channel.basic_qos(prefetch_count=self.prefetch, callback=self.on_qos_ok)
            return
        method, kwargs = steps[0]
        getattr(channel, method)(**declare_kwargs(kwargs),
                                 callback=functools.partial(self._declare, channel, steps[1:]))

    def on_qos_ok(self, _frame: Any) -> None:
        """Prefetch set: switch on publisher confirms (for dead letters and retries)."""
        self.ledger.channel.confirm_delivery(ack_nack_callback=self.on_confirm,
                                             callback=self.on_confirm_select_ok)

    def on_confirm_select_ok(self, _frame: Any) -> None:
        """Channel ready: consume unless paused or stopping."""
        self.link.worked()
        if self.state.stopping:
            self.close()
        elif self.state.paused and not self.topology.partitions:
            self.state.status = "paused"
        else:
            self._start_consuming()
            if self.state.paused:
                self.state.status = "paused"

    # --- closing ---------------------------------------------------------------------------
    def on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        """A closed channel invalidates its delivery tags; the connection goes with it."""
        if channel is not self.ledger.channel:
            return
        log.log(logging.INFO if self.state.closing else logging.WARNING, "channel closed: %s",
                describe_close(reason))
        declaring = self.state.status == "declaring"
        self.gone()
        if declaring and is_fatal(reason):
            self.link.give_up(f"broker {self.link.url} refused the topology: "
                              f"{describe_close(reason)}; an existing exchange or queue has "
                              "other settings, or a plugin is missing")
            return
        self.link.drop()

    def gone(self) -> None:
        """The channel is closed (or its connection is): nothing on it can be settled."""
        self.ledger.gone()
        self.subscriptions.gone()

    def close(self) -> None:
        """Send held-back acks, then close once no forwarded copy awaits its confirm."""
        self.state.stopping = True
        self.state.closing = True
        self.send_acks()  # held-back acks go out before the channel closes

    def finish_if_settled(self) -> None:
        """Closing, and nothing pending any more: close the connection."""
        if self.state.closing and not self.ledger.pending:
            self.link.close_or_finish()

    def force_close(self) -> None:
        """The grace period is over: close without waiting for pending confirms."""
        self.ledger.pending.clear()
        self.close()

    # --- consuming -------------------------------------------------------------------------
    def _start_consuming(self) -> None:
        """Subscribe to every queue we are not subscribed to yet."""
        missing = self.subscriptions.subscribe_missing()
        self.state.status = "consuming"
        if missing:
            log.info("consuming from %s (prefetch %d) on %s", ", ".join(missing),
                     self.prefetch, self.link.url)

    def on_consumer_cancelled(self, frame: Any) -> None:
        """The broker cancelled a subscription (queue deleted, leader moved, node going away):
        subscribe again on the same channel after a short wait. Deliveries we hold stay ours
        (their tags belong to the channel, not the subscription). If the queue is gone, the
        broker closes the channel and we reconnect, which declares it again."""
        self.subscriptions.cancelled(frame.method.consumer_tag, self._resubscribe)

    def _resubscribe(self, channel: Any) -> None:
        # Only on the channel the cancel came on, and not while paused or stopping: resume
        # (or the next channel) subscribes to whatever is missing.
        if channel is self.ledger.channel and channel.is_open and not self.state.stopping \
                and not self.state.closing and self.state.status == "consuming":
            self._start_consuming()

    def on_message(self, queue: str, channel: Any, method: Any, properties: Any,
                   body: bytes) -> None:
        """Hand the delivery to the consumer, tagged with this channel's generation."""
        if not self.ledger.received(channel, method.delivery_tag):
            return
        self.on_delivery(Delivery(bytes(body), method.delivery_tag, self.ledger.generation,
                                  queue, method.exchange, method.routing_key,
                                  bool(method.redelivered), properties_dict(properties)))

    def pause(self) -> None:
        """Stop taking deliveries; unacked ones stay with us."""
        if self.state.paused:
            return
        self.state.paused = True
        if self.state.status == "consuming":
            self.state.status = "paused"
            log.warning("paused: not taking deliveries until the store answers")
            if not self.topology.partitions:
                self.subscriptions.cancel_all()
            # Partition queues have one active consumer each: cancelling would let a standby
            # overtake the messages we hold, so we keep the subscription; the prefetch window
            # bounds what the broker sends meanwhile, and nothing is acked.

    def resume(self) -> None:
        """Take deliveries again after ``pause``."""
        if not self.state.paused:
            return
        self.state.paused = False
        if self.state.status == "paused" and not self.state.stopping \
                and self.ledger.channel is not None:
            self._start_consuming()  # whatever is not subscribed (all, or cancelled ones)
            log.info("resumed consuming")

    # --- settling --------------------------------------------------------------------------
    def send_acks(self) -> None:
        """Send every ack requested so far, then run the requests' ``after`` callbacks."""
        requests = self.ledger.take()
        self.ledger.ack([d for deliveries, _ in requests for d in deliveries])
        self.finish_if_settled()
        for _, after in requests:
            run_after(after)

    def forward(self, delivery: Delivery, queue: str, body: bytes, properties: dict) -> None:
        """Publish a copy of ``delivery`` to ``queue``; its confirm acks ``delivery``."""
        if not self.ledger.forward(delivery, queue, body, properties):
            self.finish_if_settled()

    def on_message_returned(self, channel: Any, method: Any, properties: Any,
                            body: bytes) -> None:
        """A forwarded copy had no queue: drop the channel so nothing is acked on its behalf."""
        log.error("forwarded copy returned by the broker (%s %s, queue %r missing?); "
                  "reopening the channel so the original is redelivered", method.reply_code,
                  method.reply_text, method.routing_key)
        if channel is self.ledger.channel and channel.is_open:
            channel.close()

    def on_confirm(self, frame: Any) -> None:
        """Broker confirmed (ack) or refused (nack) forwarded copies: settle their originals."""
        if self.ledger.confirmed(frame):
            self.finish_if_settled()
