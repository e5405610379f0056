"""The subscriptions (``basic.consume``) of a consuming channel, one per queue, and taking one
up again after the broker cancelled it. Runs on the transport's IO thread."""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from .failures import Waits, capped_backoff

log = logging.getLogger(__name__)


class Subscriptions:
    """Our consumer tag on each queue of the current channel."""

    def __init__(self, queues: list[str], ioloop: Any, on_message: Callable[..., None]):
        self.queues = queues
        self._ioloop = ioloop
        self._on_message = on_message  # (queue, channel, method, properties, body)
        self._channel: Any = None
        self._tags: dict[str, str] = {}  # queue -> our consumer tag on it
        # Between resubscriptions after the broker cancelled us (so a broker that keeps
        # cancelling is not asked again in a tight loop); reset once a subscription holds.
        self._waits = Waits(capped_backoff(0.2, 5.0))

    def opened(self, channel: Any) -> None:
        """A new channel: subscribed to nothing on it yet."""
        self._channel = channel
        self._tags.clear()

    def gone(self) -> None:
        """The channel closed, and every subscription with it."""
        self._channel = None
        self._tags.clear()

    def subscribe_missing(self) -> list[str]:
        """Subscribe to every queue not subscribed to yet; the queues subscribed now."""
        missing = [q for q in self.queues if q not in self._tags]
        for queue in missing:
            self._tags[queue] = self._channel.basic_consume(
                queue, functools.partial(self._on_message, queue), callback=self.on_consume_ok)
        return missing

    def on_consume_ok(self, _frame: Any) -> None:
        """A subscription holds: later cancels start again from the shortest wait."""
        self._waits.reset()

    def cancel_all(self) -> None:
        """Cancel every subscription (deliveries held stay ours: their tags are the channel's)."""
        if self._channel is not None and self._channel.is_open:
            for tag in self._tags.values():
                self._channel.basic_cancel(tag)
        self._tags.clear()

    def cancelled(self, tag: str, resubscribe: Callable[[Any], None]) -> None:
        """The broker cancelled subscription ``tag``: call ``resubscribe(channel)`` after a
        short wait, unless it is not one of ours any more."""
        queue = next((q for q, t in self._tags.items() if t == tag), None)
        if queue is None:
            return  # not one of ours any more (we cancelled it ourselves meanwhile)
        del self._tags[queue]
        delay = self._waits.next()
        log.warning("the broker cancelled our subscription to %s; subscribing again in "
                    "%.1fs", queue, delay)
        self._ioloop.call_later(delay, functools.partial(resubscribe, self._channel))
