"""Publishing on a blocking connection with publisher confirms: ``ConfirmingPublisher``, used by
the short-lived and synchronous publishers (``reactor publish``, ``reactor serve``)."""
from __future__ import annotations

from typing import Any, Mapping

import pika
import pika.exceptions

from ..domain.errors import BrokerError
from .endpoints import Endpoints
from .failures import BrokerRefused, describe_close, is_fatal, refusal
from .properties import basic_properties
from .topology import Topology, declare_blocking


def open_blocking(endpoints: Endpoints) -> pika.BlockingConnection:
    """A connection to the first URL of ``endpoints`` that answers (each tried once, from the
    current one on); BrokerError naming every failure."""
    failures = []
    for _ in range(len(endpoints)):
        url = endpoints.url
        try:
            connection = pika.BlockingConnection(endpoints.parameters)
        except pika.exceptions.AMQPError as exc:
            failures.append(f"{url}: {describe_close(exc)}")
            if is_fatal(exc):  # the same credentials would be refused by every node
                raise BrokerRefused(f"cannot connect to {failures[-1]}") from None
            endpoints.failed()
            continue
        endpoints.worked()
        return connection
    if len(failures) == 1:
        raise BrokerError(f"cannot connect to {failures[0]}")
    raise BrokerError(f"cannot connect to any of the {len(failures)} broker URLs: "
                      + "; ".join(failures))


class ConfirmingPublisher:
    """A blocking channel in confirm mode: each ``publish`` returns once the broker confirmed.

    ``url`` may name several brokers (comma-separated, or an ``Endpoints`` shared by the
    publishers that replace one another): the first that answers is used."""

    def __init__(self, url: "str | Endpoints", topology: Topology | None = None,
                 name: str = "reactor publish"):
        self._endpoints = Endpoints.of(url, name)
        self._connection = open_blocking(self._endpoints)
        self.url = self._endpoints.url
        try:
            self._channel = self._connection.channel()
            if topology is not None:
                declare_blocking(self._channel, topology)
            self._channel.confirm_delivery()
        except pika.exceptions.AMQPError as exc:
            self.close()
            raise refusal(f"broker {self.url} refused the topology: {describe_close(exc)}",
                           exc) from None

    def _lost(self) -> None:
        # The next publisher on these endpoints starts with another node.
        if self._endpoints.url == self.url and len(self._endpoints) > 1:
            self._endpoints.failed()

    def publish(self, exchange: str, routing_key: str, body: bytes,
                properties: Mapping[str, Any]) -> None:
        """Publish one persistent message; raise BrokerError unless it was confirmed."""
        try:
            self._channel.basic_publish(exchange, routing_key, body,
                                        basic_properties(properties), mandatory=True)
        except pika.exceptions.UnroutableError:
            raise BrokerError(f"no queue is bound to exchange {exchange!r}: the message was "
                              "returned unrouted") from None
        except pika.exceptions.NackError:
            raise BrokerError("the broker refused the message (negative confirm)") from None
        except pika.exceptions.AMQPError as exc:
            if not self.is_open:
                self._lost()
            raise BrokerError(f"publishing to {self.url} failed: {describe_close(exc)}") from None

    @property
    def is_open(self) -> bool:
        return self._connection.is_open and self._channel.is_open

    def ping(self) -> None:
        """Service the idle connection's pending I/O (heartbeats); BrokerError if it is gone.

        A long-lived publisher (``reactor serve``) calls this every few seconds between
        publishes, serialised with them (pika is not thread-safe)."""
        try:
            self._connection.process_data_events(time_limit=0)
        except pika.exceptions.AMQPError as exc:
            self._lost()
            raise BrokerError(f"broker connection to {self.url} lost: "
                              f"{describe_close(exc)}") from None
        if not self.is_open:
            self._lost()
            raise BrokerError(f"broker connection to {self.url} is closed")

    def close(self) -> None:
        """Close the connection (quietly if it is already gone)."""
        try:
            if self._connection.is_open:
                self._connection.close()
        except pika.exceptions.AMQPError:
            pass

    def __enter__(self) -> "ConfirmingPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
