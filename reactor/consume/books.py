"""The consumer's bookkeeping: outcome counts, metrics, one log line per settled message, the
health file and the gauges.

The lines of acked messages are written on the IO thread right after their acks went out (see
``settle.AckHold``): the worker meanwhile starts on the next list, and the IO thread mostly
runs while the worker waits for the store.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Callable

from ..broker.base import Delivery
from ..domain.outcomes import Action, ActionKind, Outcome
from ..domain.tokens import mask_text
from ..obs.logs import FIELDS_ATTR, batched, outcome_fields
from .health import HealthFile
from .settle import Book, scrub

# One line per settled message, under the consumer's name: log pipelines (and the tests)
# select the outcome lines by it, whichever part of the consumer writes them.
log = logging.getLogger("reactor.consume.consumer")

# Connection states in which the broker connection is up.
_CONNECTED = ("declaring", "consuming", "paused")


class Books:
    """Counts, metrics, log lines and health of one consumer."""

    def __init__(self, metrics: Any | None, health: HealthFile | None,
                 status: Callable[[], str], outage: Callable[[], bool]):
        self.metrics = metrics  # a reactor.obs.metrics.Metrics, or None
        self.health = health
        self._status = status    # the connection's status
        self._outage = outage    # True while the store does not answer
        self.counts: Counter[str] = Counter()

    # --- in flight -----------------------------------------------------------------------------
    def received(self) -> None:
        """One delivery more in the worker's hands (called on the IO thread)."""
        if self.metrics is not None:
            self.metrics.in_flight.inc()

    def done(self, count: int) -> None:
        """``count`` deliveries are out of the worker's hands (settled, or left to the broker)."""
        if self.metrics is not None and count:
            self.metrics.in_flight.dec(count)

    # --- settled messages --------------------------------------------------------------------
    def acked(self, delivery: Delivery, outcome: Outcome, attempt: int,
              taken_at: float) -> Book:
        """The bookkeeping of a delivery being acked (its count, metrics and log line), to run
        on the IO thread right after the ack."""
        latency = time.perf_counter() - taken_at

        def book() -> None:
            self.counts[outcome.label] += 1
            extra = self._observe(delivery, outcome, attempt, ActionKind.ACK, latency)
            log.info("%s: %s (message id %s)", outcome.label, mask_text(outcome.detail),
                     delivery.message_id, extra=extra)
        return book

    @staticmethod
    def run(books: list[Book]) -> None:
        """Run the books of acks that went out together."""
        # One write for the list's lines: on the embedded store a write per line cost a
        # measurable share of the consumer's throughput.
        with batched():
            for book in books:
                book()

    def forwarded(self, delivery: Delivery, outcome: Outcome, action: Action, attempt: int,
                  taken_at: float, retry_delay_ms: int) -> None:
        """Count and log a copy sent to the delayed-retry or dead-letter queue."""
        self.counts[f"{action.kind}:{action.reason}"] += 1
        extra = self._observe(delivery, outcome, attempt, action.kind,
                              time.perf_counter() - taken_at)
        if action.kind == ActionKind.RETRY_LATER:
            if self.metrics is not None:
                self.metrics.retried(action.reason)
            log.info("%s on attempt %d: retrying after %d ms (message id %s): %s",
                     outcome.label, attempt, retry_delay_ms, delivery.message_id,
                     scrub(outcome.detail, delivery), extra=extra)
        else:
            if self.metrics is not None:
                self.metrics.dead_lettered(action.reason)
            log.warning("dead-lettering (%s) after %d attempt(s) (message id %s): %s",
                        action.reason, attempt, delivery.message_id,
                        scrub(action.detail, delivery), extra=extra)

    def _observe(self, delivery: Delivery, outcome: Outcome, attempt: int, action: str,
                 latency: float) -> dict:
        """Count the outcome in the metrics; the structured log fields of the message."""
        if self.metrics is not None:
            self.metrics.observe(outcome, latency)
            self.update_gauges()  # a scrape right after this message sees them current
        return {FIELDS_ATTR: outcome_fields(outcome, message_id=delivery.message_id,
                                            attempt=attempt, latency_s=latency,
                                            action=action)}

    # --- health ----------------------------------------------------------------------------------
    def write_health(self) -> None:
        """Rewrite the health file with the current status and counts."""
        status = "paused" if self._outage() else self._status()
        self.health.write(status, self.counts)

    def update_gauges(self) -> None:
        """Set the connection gauges (read-only of the connection's status, so any thread)."""
        self.metrics.set_broker_connected(self._status() in _CONNECTED)
        self.metrics.set_store_connected(not self._outage())
