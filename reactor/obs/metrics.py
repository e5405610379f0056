"""Prometheus metrics of one process (``reactor consume`` or ``reactor serve``).

Each ``Metrics`` object owns a private ``CollectorRegistry``: nothing is registered globally,
so tests (and a process embedding the reactor) can hold several side by side. ``consume``
exposes them with ``serve_http`` (``--metrics-port``); ``reactor serve`` answers ``GET
/metrics`` with ``render``.

Label values are bounded sets (outcome kinds, the reasons of ``reactor.domain.outcomes``, endpoint
names, status codes), never job uuids or message ids: unbounded labels would grow the
registry without limit.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest, start_http_server)

from ..domain.outcomes import (DEAD_LETTER_ONLY_REASONS, REJECT_REASONS, RETRY_REASONS, Kind,
                               Reason)

# Seconds: from well under a millisecond (a duplicate on SQLite) to a store outage ride-out.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0)
NO_REASON = ""


class Metrics:
    """Counters, gauges and histograms of one process, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter("reactor_messages", "Messages processed, by outcome kind and "
                                "reason (empty for applied and duplicate)",
                                ["outcome", "reason"], registry=r)
        self.latency = Histogram("reactor_processing_seconds", "Time from taking a message to "
                                 "knowing its outcome (after the commit)",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("reactor_in_flight", "Deliveries received and not yet settled",
                               registry=r)
        self.broker_connected = Gauge("reactor_broker_connected", "1 while the broker "
                                      "connection is up, else 0", registry=r)
        self.store_connected = Gauge("reactor_store_connected", "1 while the store answers, "
                                     "else 0", registry=r)
        self.dead_letters = Counter("reactor_dead_letters", "Messages sent to the dead-letter "
                                    "queue, by reason", ["reason"], registry=r)
        self.retries = Counter("reactor_retries", "Messages sent to the delayed-retry queue, by "
                               "reason", ["reason"], registry=r)
        self.http_requests = Counter("reactor_http_requests", "HTTP requests answered by "
                                     "`reactor serve`, by endpoint and status code",
                                     ["endpoint", "status"], registry=r)
        self.publish_latency = Histogram("reactor_publish_seconds", "Time to publish one "
                                         "message and receive the broker's confirm",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self._server: Any = None
        self._lock = threading.Lock()
        self._zero()

    def _zero(self) -> None:
        # Every known series exists from the start at 0, so a scrape before the first message
        # already shows it and rate() has a starting point.
        for kind in (Kind.APPLIED, Kind.DUPLICATE):
            self.messages.labels(kind, NO_REASON)
        for reason in REJECT_REASONS:
            self.messages.labels(Kind.REJECTED, reason)
            self.dead_letters.labels(reason)
        for reason in RETRY_REASONS:
            self.messages.labels(Kind.RETRY, reason)
            self.retries.labels(reason)
        for reason in DEAD_LETTER_ONLY_REASONS:
            self.dead_letters.labels(reason)
        # The one rejection that goes through the delayed-retry queue first (out of order).
        self.retries.labels(Reason.INVALID_TRANSITION)

    # --- recording ---------------------------------------------------------------------------
    def observe(self, outcome: Any, seconds: float | None = None) -> None:
        """Count one message's ``Outcome`` and, if given, how long it took."""
        self.messages.labels(outcome.kind, outcome.reason or NO_REASON).inc()
        if seconds is not None:
            self.latency.observe(max(seconds, 0.0))

    @contextmanager
    def in_progress(self) -> Iterator[None]:
        """Count a delivery as in flight for the duration of the block."""
        self.in_flight.inc()
        try:
            yield
        finally:
            self.in_flight.dec()

    def dead_lettered(self, reason: str) -> None:
        """Count one message sent to the dead-letter queue."""
        self.dead_letters.labels(reason or NO_REASON).inc()

    def retried(self, reason: str) -> None:
        """Count one message sent to the delayed-retry queue."""
        self.retries.labels(reason or NO_REASON).inc()

    def set_broker_connected(self, up: bool) -> None:
        """Record whether the broker connection is up."""
        self.broker_connected.set(1 if up else 0)

    def set_store_connected(self, up: bool) -> None:
        """Record whether the store answers."""
        self.store_connected.set(1 if up else 0)

    def http_request(self, endpoint: str, status: int) -> None:
        """Count one HTTP request answered by ``reactor serve``."""
        self.http_requests.labels(endpoint, str(status)).inc()

    @contextmanager
    def timing_publish(self) -> Iterator[None]:
        """Time one confirmed publish (only successful ones are observed)."""
        start = time.perf_counter()
        yield
        self.publish_latency.observe(time.perf_counter() - start)

    # --- exposition --------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def serve_http(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the bound port."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the metrics server is already running")
            try:
                server, _thread = start_http_server(port, host, registry=self.registry)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot serve metrics on {host}:{port}: "
                              f"{exc.strerror}") from None
            self._server = server
            return server.server_address[1]

    def close(self) -> None:
        """Stop the metrics server, if one runs."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
