"""What a consuming channel owes the broker: its deliveries not settled yet, forwarded copies
awaiting their confirms, and the acks the worker asked for.

Delivery tags are only meaningful on the channel they arrived on, so every channel gets a new
``generation`` and a delivery of an older one is never settled (the broker redelivers it).
Everything here runs on the transport's IO thread except ``is_current`` and ``request``.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import pika.spec

from .base import Delivery
from .properties import basic_properties

log = logging.getLogger(__name__)

AckRequest = tuple[list[Delivery], "Callable[[], None] | None"]


class ChannelLedger:
    """The settling state of the current channel (none between channels)."""

    def __init__(self) -> None:
        self.generation = 0
        self.channel: Any = None
        self._lock = threading.Lock()  # guards generation and channel reads from other threads
        self._publish_seq = 0
        self.pending: dict[int, Delivery] = {}  # publish seq -> delivery to ack on confirm
        # Delivery tags of the current channel not yet acked or nacked: a multiple-ack may
        # only reach up to just below the lowest tag held for any other reason.
        self.unsettled: set[int] = set()
        # Acks requested by the worker and not sent yet, and whether a send is scheduled.
        self._acks: list[AckRequest] = []
        self._acks_scheduled = False
        self._acks_lock = threading.Lock()

    # --- channel life ----------------------------------------------------------------------
    def opened(self, channel: Any) -> None:
        """A new channel: a new generation, nothing owed on it yet."""
        with self._lock:
            self.generation += 1
            self.channel = channel
        self._publish_seq = 0
        self.pending.clear()
        self.unsettled.clear()

    def gone(self) -> None:
        """The channel closed: its tags and pending confirms mean nothing any more."""
        with self._lock:
            self.channel = None
        self.pending.clear()
        self.unsettled.clear()

    def is_current(self, delivery: Delivery) -> bool:
        """True while the channel ``delivery`` arrived on is still open (any thread)."""
        with self._lock:
            return delivery.generation == self.generation and self.channel is not None

    def live(self, delivery: Delivery) -> bool:
        """True if ``delivery`` can be settled now (logs why not otherwise)."""
        if delivery.generation == self.generation and self.channel is not None \
                and self.channel.is_open:
            return True
        log.info("not settling delivery %d of channel %d: that channel is gone; the broker "
                 "redelivers it", delivery.tag, delivery.generation)
        return False

    def received(self, channel: Any, tag: int) -> bool:
        """Note delivery ``tag`` on ``channel``; False if that channel is not ours any more."""
        if channel is not self.channel:
            return False
        self.unsettled.add(tag)
        return True

    # --- acks ------------------------------------------------------------------------------
    def request(self, deliveries: list[Delivery], after: Callable[[], None] | None,
                now: bool) -> bool:
        """Queue an ack request (any thread); True if the caller must schedule ``take``."""
        with self._acks_lock:
            self._acks.append((list(deliveries), after))
            if not now or self._acks_scheduled:
                return False
            self._acks_scheduled = True
            return True

    def take(self) -> list[AckRequest]:
        """Every ack request queued so far (they are the caller's to send now)."""
        with self._acks_lock:
            requests, self._acks = self._acks, []
            self._acks_scheduled = False
        return requests

    def ack(self, deliveries: list[Delivery]) -> None:
        """Ack ``deliveries`` of the current channel: one multiple-ack where that settles
        nothing else, the rest one by one."""
        tags = sorted(d.tag for d in deliveries if self.live(d))
        if not tags:
            return
        # basic.ack(multiple) settles EVERY unsettled tag up to it, so it must stop below the
        # lowest tag still held for another reason (a forwarded copy awaiting its confirm, a
        # delivery not processed yet); the rest are acked one by one.
        held = self.unsettled.difference(tags)
        limit = min(held) if held else tags[-1] + 1
        below = [t for t in tags if t < limit]
        if below:
            self.channel.basic_ack(below[-1], multiple=True)
        for tag in tags[len(below):]:
            self.channel.basic_ack(tag)
        self.unsettled.difference_update(tags)

    # --- forwarded copies ------------------------------------------------------------------
    def forward(self, delivery: Delivery, queue: str, body: bytes, properties: dict) -> bool:
        """Publish a copy of ``delivery`` to ``queue``, to ack it on its confirm; False if its
        channel is gone (nothing sent)."""
        if not self.live(delivery):
            return False
        self._publish_seq += 1
        self.pending[self._publish_seq] = delivery
        # mandatory: a copy no queue takes comes back (on_message_returned), never silently lost
        self.channel.basic_publish("", queue, body, basic_properties(properties),
                                   mandatory=True)
        return True

    def confirmed(self, frame: Any) -> bool:
        """The broker confirmed (ack) or refused (nack) forwarded copies: settle their
        originals (ack, or requeue). False if there is no open channel to settle on."""
        if self.channel is None or not self.channel.is_open:
            return False
        confirm = frame.method
        tag = confirm.delivery_tag
        seqs = [s for s in self.pending if s <= tag] if confirm.multiple else [tag]
        acked = isinstance(confirm, pika.spec.Basic.Ack)
        for seq in sorted(seqs):
            delivery = self.pending.pop(seq, None)
            if delivery is None:
                continue
            self.unsettled.discard(delivery.tag)
            if acked:
                self.channel.basic_ack(delivery.tag)
            else:
                log.warning("broker refused forwarded copy of delivery %d; requeueing the "
                            "original", delivery.tag)
                self.channel.basic_nack(delivery.tag, requeue=True)
        return True
