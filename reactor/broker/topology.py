"""The broker topology as data: exchanges, queues and bindings, validated, and the ordered
channel calls that declare it (the same for every client, so any of them may create it)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pika.exchange_type import ExchangeType

from ..domain.errors import ConfigError
from ..config import Settings

HASH_EXCHANGE_TYPE = "x-consistent-hash"
_NAME = re.compile(r"^[\w.:-]{1,200}$")


@dataclass(frozen=True)
class Topology:
    """Exchanges, queues and bindings, as data; declared the same way by consumer and publisher.

    Events are published to ``exchange`` (fanout, durable) with the job uuid as routing key.
    Unpartitioned, one main queue is bound to it. With ``partitions`` = N, a consistent-hash
    exchange (keyed on the routing key, i.e. the job uuid) fans out to N single-active-consumer
    queues ``<queue>.p<i>``, so one job's events always land in one queue with one active
    consumer, in order. Every main queue has its own delayed-retry queue (per-queue TTL,
    dead-lettering back to that main queue); one dead-letter queue serves all.
    """

    exchange: str = "reactor"
    queue: str = "reactor.events"
    dead_letter_queue: str = "reactor.dead"
    retry_queue: str = "reactor.retry"
    queue_type: str = "classic"
    retry_delay_ms: int = 1000
    partitions: int = 0
    # Quorum main queues: the broker's ``x-delivery-limit`` (redeliveries it allows before it
    # dead-letters a message itself); None = no limit. Classic queues ignore it.
    delivery_limit: int | None = None

    def __post_init__(self) -> None:
        for key in ("exchange", "queue", "dead_letter_queue", "retry_queue"):
            value = getattr(self, key)
            if not isinstance(value, str) or not _NAME.fullmatch(value) or value.startswith("amq."):
                raise ConfigError(f"bad value for {key!r}: {value!r} (1-200 letters, digits, "
                                  "'.', '_', ':', '-'; not starting with 'amq.')")
        names = [self.queue, self.dead_letter_queue, self.retry_queue]
        if len(set(names)) != 3:
            raise ConfigError("queue, dead_letter_queue and retry_queue must be three different "
                              f"names, got {names}")
        if self.queue_type not in ("classic", "quorum"):
            raise ConfigError(f"bad value for 'queue_type': {self.queue_type!r} (classic or "
                              "quorum)")
        if not isinstance(self.partitions, int) or not 0 <= self.partitions <= 1000:
            raise ConfigError(f"bad value for 'partitions': {self.partitions!r} (0 = one main "
                              "queue, else 1-1000 partition queues)")
        if self.retry_delay_ms < 1:
            raise ConfigError(f"bad value for 'retry_delay_ms': {self.retry_delay_ms!r}")
        if self.delivery_limit is not None and self.delivery_limit < 0:
            raise ConfigError(f"bad delivery limit {self.delivery_limit!r}: max_attempts must "
                              "be at least 1")

    @classmethod
    def from_settings(cls, settings: Settings, partitions: int | None = None) -> "Topology":
        """The topology named by the configuration (``partitions`` overrides the setting)."""
        if partitions is None:
            partitions = settings.partitions
        return cls(settings.exchange, settings.queue, settings.dead_letter_queue,
                   settings.retry_queue, settings.queue_type, settings.retry_delay_ms,
                   partitions, delivery_limit=settings.max_attempts - 1)

    @property
    def hash_exchange(self) -> str:
        """The consistent-hash exchange of the partitioned layout."""
        return f"{self.exchange}.hash"

    @property
    def main_queues(self) -> list[str]:
        """Every queue events are consumed from (one, or one per partition)."""
        if not self.partitions:
            return [self.queue]
        return [f"{self.queue}.p{i}" for i in range(self.partitions)]

    def member_queues(self, index: int, members: int) -> list[str]:
        """The main queues consumer ``index`` of ``members`` consumes (partition i % members)."""
        if not 0 <= index < members:
            raise ConfigError(f"member index {index} is not in 0..{members - 1}")
        queues = self.main_queues
        if members > 1 and not self.partitions:
            # Competing consumers on one queue are safe, just unordered; every member takes it.
            return queues
        if members > len(queues):
            raise ConfigError(f"{members} members but only {len(queues)} partition queue(s); "
                              "raise partitions to at least the number of consumers")
        return [q for i, q in enumerate(queues) if i % members == index]

    def retry_queue_for(self, queue: str) -> str:
        """The delayed-retry queue that returns messages to main queue ``queue``."""
        if not self.partitions:
            return self.retry_queue
        return f"{self.retry_queue}.{queue.rsplit('.', 1)[1]}"

    @property
    def quorum(self) -> bool:
        """True when every queue is a replicated quorum queue."""
        return self.queue_type == "quorum"

    def _dead_lettering(self, target: str) -> dict:
        """Queue arguments that make the broker dead-letter to queue ``target``. On quorum
        queues the default is at most once (a message is dropped if the target cannot take it,
        say while its leader moves); at least once keeps it until the target confirmed, and
        RabbitMQ allows that only together with reject-publish overflow (without a length
        limit that rejects nothing)."""
        args = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": target}
        if self.quorum:
            args.update({"x-dead-letter-strategy": "at-least-once",
                         "x-overflow": "reject-publish"})
        return args

    def _main_arguments(self) -> dict:
        """Arguments of a main queue beyond its type (partition, delivery limit)."""
        args: dict = {"x-single-active-consumer": True} if self.partitions else {}
        if self.quorum and self.delivery_limit is not None:
            # A message that keeps killing its consumer (no outcome is ever recorded) is
            # dead-lettered by the broker once it was delivered max_attempts times.
            args["x-delivery-limit"] = self.delivery_limit
            args.update(self._dead_lettering(self.dead_letter_queue))
        return args

    def declarations(self) -> list[tuple[str, dict]]:
        """Channel method calls, in order, that create this topology (idempotent)."""
        # Durable and neither exclusive nor auto-delete, which quorum queues require anyway.
        # The dead-letter queue gets no delivery limit: browsing it (reactor deadletters)
        # returns each message with a nack, which a quorum queue counts as a delivery.
        args = {"x-queue-type": self.queue_type}
        steps: list[tuple[str, dict]] = [
            ("exchange_declare", dict(exchange=self.exchange, exchange_type="fanout",
                                      durable=True)),
            ("queue_declare", dict(queue=self.dead_letter_queue, durable=True, arguments=args)),
        ]
        source = self.exchange
        extra = self._main_arguments()
        weight = ""
        if self.partitions:
            steps += [
                ("exchange_declare", dict(exchange=self.hash_exchange,
                                          exchange_type=HASH_EXCHANGE_TYPE, durable=True)),
                ("exchange_bind", dict(destination=self.hash_exchange, source=self.exchange,
                                       routing_key="")),
            ]
            source = self.hash_exchange
            weight = "1"  # equal share of the hash space per partition
        for queue in self.main_queues:
            steps += [
                ("queue_declare", dict(queue=queue, durable=True, arguments={**args, **extra})),
                ("queue_bind", dict(queue=queue, exchange=source, routing_key=weight)),
                ("queue_declare", dict(queue=self.retry_queue_for(queue), durable=True,
                                       arguments={**args, "x-message-ttl": self.retry_delay_ms,
                                                  **self._dead_lettering(queue)})),
            ]
        return steps


def _exchange_type(name: str) -> Any:
    # pika wants its enum for the built-in types and a plain string for plugin types.
    try:
        return ExchangeType(name)
    except ValueError:
        return name


def declare_kwargs(kwargs: dict) -> dict:
    """The keyword arguments of one declaration step as pika takes them."""
    if "exchange_type" in kwargs:
        return {**kwargs, "exchange_type": _exchange_type(kwargs["exchange_type"])}
    return kwargs


def declare_blocking(channel: Any, topology: Topology) -> None:
    """Declare ``topology`` on a ``BlockingConnection`` channel (idempotent)."""
    for method, kwargs in topology.declarations():
        getattr(channel, method)(**declare_kwargs(kwargs))
