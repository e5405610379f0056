"""The bridge from ``reactor serve``'s request threads to the broker: one confirming publisher.

Starlette runs the blocking pika calls in its thread pool; a keepalive thread (see
``http.create_app``) services heartbeats while no request comes, so an idle connection stays open.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Mapping

from ..domain.errors import BrokerError
from ..obs.metrics import Metrics
from ..broker.confirming import ConfirmingPublisher
from ..broker.endpoints import Endpoints
from ..broker.topology import Topology
from ..domain.tokens import mask_url

log = logging.getLogger(__name__)

KEEPALIVE_S = 10.0  # well inside the 30 s heartbeat: an idle connection stays open
APP_ID = "reactor serve"


class BrokerLink:
    """One confirming publisher shared by all request threads.

    pika connections are not thread-safe, so every use of the publisher holds one lock; the
    publisher is created on first use and again after the connection was lost."""

    def __init__(self, url: str, topology: Topology, metrics: Metrics | None = None,
                 factory: Callable[[], Any] | None = None):
        self.url = mask_url(url)
        self.topology = topology
        self.metrics = metrics
        # Shared by the publishers that replace one another: one URL or one per cluster node,
        # in a shuffled order; after a lost connection the next one is tried first.
        endpoints = Endpoints(url, APP_ID) if factory is None else None
        self._factory = factory or (lambda: ConfirmingPublisher(endpoints, topology, APP_ID))
        self._publisher: Any = None
        self._lock = threading.Lock()

    def _connected(self) -> Any:
        if self._publisher is not None and not self._publisher.is_open:
            self._drop()
        if self._publisher is None:
            try:
                self._publisher = self._factory()
            except BrokerError:
                self._state(False)
                raise
            self._state(True)
        return self._publisher

    def _drop(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()
        self._state(False)

    def _state(self, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.set_broker_connected(up)

    def publish(self, routing_key: str, body: bytes, properties: Mapping[str, Any]) -> None:
        """Publish to the exchange and wait for the confirm; BrokerError if not confirmed."""
        with self._lock:
            for attempt in (1, 2):
                publisher = self._connected()
                try:
                    publisher.publish(self.topology.exchange, routing_key, body, properties)
                    return
                except BrokerError:
                    if publisher.is_open or attempt == 2:
                        raise  # refused or unroutable on a live connection: a real answer
                    # The connection died while idle (broker restart, a missed heartbeat):
                    # once more on a fresh one. Should the first copy have arrived after all,
                    # its message id makes the second a duplicate.
                    self._drop()

    def check(self) -> None:
        """Raise BrokerError unless the broker answers on our connection."""
        with self._lock:
            try:
                self._connected().ping()
            except BrokerError:
                self._drop()
                raise

    def keepalive(self) -> None:
        """Service heartbeats of an idle connection (called every few seconds)."""
        with self._lock:
            if self._publisher is None:
                return
            try:
                self._publisher.ping()
            except BrokerError as exc:
                log.warning("broker connection lost while idle: %s; reconnecting on the next "
                            "request", exc)
                self._drop()

    def close(self) -> None:
        """Close the connection, if any."""
        with self._lock:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None
