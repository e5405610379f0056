"""RabbitMQ transport: the only module that imports pika.

It knows connections, channels, topology, delivery tags and publisher confirms, and nothing about
jobs or outcomes (it also browses and re-drives a queue for ``reactor deadletters``).
``reactor.consume.consumer`` decides what happens to a message; this module carries it out on the wire.
A broker URL setting may name several nodes of a cluster (comma-separated):
every client tries them in a shuffled order (``Endpoints``) and moves on to the next when one
refuses or is lost.

Why ``SelectConnection`` for consuming: its IO loop owns the socket in the main thread and keeps
servicing heartbeats, confirms and signals however long the store takes, while messages are
processed on one worker thread that may block (store retries, outages). The worker hands its
decisions back with ``add_callback_threadsafe``, so only the IO thread ever touches a channel.
A ``BlockingConnection`` would have to interleave ``process_data_events`` with processing in
one thread and starve heartbeats while a store call blocks. The publisher side (``reactor
publish``) is short-lived and synchronous, so it uses a ``BlockingConnection``.
"""
from __future__ import annotations

import functools
import logging
import random
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop
from pika.exchange_type import ExchangeType

from ..domain.errors import BrokerError, ConfigError
from .base import Delivery

log = logging.getLogger(__name__)

HASH_EXCHANGE_TYPE = "x-consistent-hash"
DEFAULT_HEARTBEAT_S = 30
# AMQP property names copied from a delivery when it is forwarded (dead letter / delayed retry).
# ``expiration`` is left out (a forwarded copy must not expire on its own), and so is
# ``user_id`` (the broker checks it against the forwarding connection's user).
COPIED_PROPERTIES = ("content_type", "content_encoding", "priority", "correlation_id",
                     "reply_to", "message_id", "timestamp", "type", "app_id", "cluster_id")
_NAME = re.compile(r"^[\w.:-]{1,200}$")
# Broker reply codes that mean "your configuration is wrong", not "try again later": access
# refused, not found, precondition failed (conflicting declaration), command invalid (e.g. an
# exchange type whose plugin is off), not allowed.
_FATAL_REPLY_CODES = frozenset({403, 404, 406, 503, 530})


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe for logs and errors)."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def connection_parameters(url: str, name: str = "reactor") -> pika.URLParameters:
    """Parameters for ``url``: heartbeats on (30 s unless the URL says), a connection name."""
    if not url or not url.startswith(("amqp://", "amqps://")):
        raise ConfigError(f"broker_url must be an amqp:// or amqps:// URL, got "
                          f"{redact_url(url)!r}; set REACTOR_BROKER_URL")
    try:
        params = pika.URLParameters(url)
    except Exception as exc:  # noqa: BLE001 - pika raises assorted types for a malformed URL
        raise ConfigError(f"broker_url {redact_url(url)!r} is not a valid AMQP URL: "
                          f"{exc}") from None
    if "heartbeat" not in url:
        params.heartbeat = DEFAULT_HEARTBEAT_S
    if "blocked_connection_timeout" not in url:
        # A broker under a resource alarm blocks publishers; give up (and reconnect) eventually.
        params.blocked_connection_timeout = 300
    params.client_properties = {"connection_name": name}
    return params


def broker_urls(url: str) -> list[str]:
    """The URLs of a ``broker_url`` setting: one, or several separated by commas (one per
    node of a cluster); ConfigError if there is none."""
    urls = [u.strip() for u in (url or "").split(",") if u.strip()]
    if not urls:
        raise ConfigError("broker_url is empty: set REACTOR_BROKER_URL to an amqp:// URL, or "
                          "to several separated by commas (one per cluster node)")
    return urls


class Endpoints:
    """The broker URLs of one client in a shuffled order (so clients spread over the nodes),
    with the one to try now; a failure moves on to the next.

    ``failed`` tells whether every URL has now failed in a row (a round): only then is it
    worth waiting before the next try, since another node may well answer at once."""

    def __init__(self, url: str, name: str = "reactor",
                 rng: random.Random | None = None):
        pairs = [(connection_parameters(u, name), redact_url(u)) for u in broker_urls(url)]
        (rng or random).shuffle(pairs)
        self._pairs = pairs
        self._index = 0
        self._failures = 0

    @classmethod
    def of(cls, url: "str | Endpoints", name: str) -> "Endpoints":
        """``url`` itself if it is already an ``Endpoints``, else its URLs shuffled."""
        return url if isinstance(url, Endpoints) else cls(url, name)

    def __len__(self) -> int:
        return len(self._pairs)

    @property
    def parameters(self) -> pika.URLParameters:
        """Connection parameters of the URL to try now."""
        return self._pairs[self._index][0]

    @property
    def url(self) -> str:
        """The URL to try now, its password masked (for logs and errors)."""
        return self._pairs[self._index][1]

    @property
    def urls(self) -> list[str]:
        """Every URL, passwords masked, in the order they are tried."""
        return [shown for _, shown in self._pairs]

    def failed(self) -> bool:
        """The current URL failed: move to the next; True once all failed in a row."""
        self._index = (self._index + 1) % len(self._pairs)
        self._failures += 1
        if self._failures >= len(self._pairs):
            self._failures = 0
            return True
        return False

    def worked(self) -> None:
        """The current URL works: a new round of failures starts from zero."""
        self._failures = 0


# --------------------------------------------------------------------------------- topology
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
    def from_settings(cls, settings: Any, partitions: int | None = None) -> "Topology":
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


def _declare_kwargs(kwargs: dict) -> dict:
    if "exchange_type" in kwargs:
        return {**kwargs, "exchange_type": _exchange_type(kwargs["exchange_type"])}
    return kwargs


def _declare_blocking(channel: Any, topology: "Topology") -> None:
    """Declare ``topology`` on a ``BlockingConnection`` channel (idempotent)."""
    for method, kwargs in topology.declarations():
        getattr(channel, method)(**_declare_kwargs(kwargs))


def describe_close(reason: BaseException | None) -> str:
    """A one-line description of why a connection or channel closed (or failed to open)."""
    if reason is None:
        return "closed"
    code = getattr(reason, "reply_code", None)
    if code is not None:
        return f"{code} {getattr(reason, 'reply_text', '')}"
    # pika wraps the socket error in args, e.g. AMQPConnectionError(ConnectorSocketError(…))
    text = str(reason) or "; ".join(str(a) or repr(a) for a in reason.args)
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


def _fatal(reason: BaseException | None) -> bool:
    if isinstance(reason, (pika.exceptions.ProbableAuthenticationError,
                           pika.exceptions.ProbableAccessDeniedError)):
        return True
    return getattr(reason, "reply_code", None) in _FATAL_REPLY_CODES


def properties_dict(props: Any) -> dict:
    """A pika ``BasicProperties`` as a plain dict (only the properties that are set)."""
    out = {}
    for name in COPIED_PROPERTIES + ("delivery_mode", "expiration", "user_id"):
        value = getattr(props, name, None)
        if value is not None:
            out[name] = value
    out["headers"] = dict(getattr(props, "headers", None) or {})
    return out


def basic_properties(props: Mapping[str, Any]) -> pika.BasicProperties:
    """``BasicProperties`` from a plain dict (persistent unless it says otherwise)."""
    values = {k: v for k, v in props.items()
              if k in COPIED_PROPERTIES + ("headers", "delivery_mode")}
    values.setdefault("delivery_mode", pika.DeliveryMode.Persistent)
    return pika.BasicProperties(**values)


class Backoff:
    """Capped exponential delays with jitter, reset after a connection worked."""

    def __init__(self, initial: float = 0.5, cap: float = 30.0,
                 rng: Callable[[], float] = random.random):
        self.initial = initial
        self.cap = cap
        self.rng = rng
        self.failures = 0

    def next(self) -> float:
        """The delay before the next attempt (half fixed, half random, so peers spread out)."""
        delay = min(self.cap, self.initial * 2 ** min(self.failures, 30))
        self.failures += 1
        return delay / 2 + self.rng() * delay / 2

    def reset(self) -> None:
        """Start again from the initial delay."""
        self.failures = 0


# --------------------------------------------------------------------------------- consuming
class ConsumerTransport:
    """One consuming connection at a time, reconnecting with backoff (to the next of its broker
    URLs: one per node of a cluster), one method per callback.

    Public methods other than ``run`` may be called from any thread: they are queued onto the IO
    loop. ``on_delivery`` is called on the IO thread and must not block.
    """

    def __init__(self, url: "str | Endpoints", topology: Topology, queues: list[str],
                 prefetch: int, on_delivery: Callable[[Delivery], None], *,
                 backoff: Backoff | None = None, name: str = "reactor consume"):
        # One URL or several (cluster nodes): a lost or refused connection moves to the next.
        self.endpoints = Endpoints.of(url, name)
        self.topology = topology
        self.queues = list(queues)
        self.prefetch = prefetch
        self.on_delivery = on_delivery
        self.backoff = backoff or Backoff()
        self.ioloop = IOLoop()
        self.status = "starting"
        self.error: str | None = None  # set when the transport gave up for good
        self.generation = 0
        self._connection: pika.SelectConnection | None = None
        self._channel = None
        self._consumer_tags: dict[str, str] = {}  # queue -> our consumer tag on it
        # Between resubscriptions after the broker cancelled us (so a broker that keeps
        # cancelling is not asked again in a tight loop); reset once a subscription holds.
        self._resubscribe_backoff = Backoff(initial=0.2, cap=5.0)
        self._publish_seq = 0
        self._pending: dict[int, Delivery] = {}  # publish seq -> delivery to ack on confirm
        # Delivery tags of the current channel not yet acked or nacked: a multiple-ack may
        # only reach up to just below the lowest tag held for any other reason.
        self._unsettled: set[int] = set()
        self._paused = False
        self._stopping = False
        self._closing = False
        self._reconnect_timer = None
        self._lock = threading.Lock()  # guards generation reads from the worker thread
        # Acks requested by the worker and not sent yet, and whether a send is scheduled.
        self._acks: list[tuple[list[Delivery], Callable[[], None] | None]] = []
        self._acks_scheduled = False
        self._acks_lock = threading.Lock()

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
        self.ioloop.add_callback_threadsafe(self._connect)
        self.ioloop.start()

    def threadsafe(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the IO thread."""
        self.ioloop.add_callback_threadsafe(functools.partial(fn, *args))

    def is_current(self, delivery: Delivery) -> bool:
        """True while the channel ``delivery`` arrived on is still open."""
        with self._lock:
            return delivery.generation == self.generation and self._channel is not None

    def ack_many(self, deliveries: list[Delivery],
                 after: Callable[[], None] | None = None, *, now: bool = True) -> None:
        """Acknowledge ``deliveries``: one multiple-ack where that settles nothing else (those
        whose channel is gone are left alone: the broker redelivers them); then run ``after``
        on the IO thread, whether or not the acks could be sent. ``now=False`` holds them back
        until ``send_acks`` (or ``close``).

        Acks requested while the IO thread has not yet sent earlier ones join them: one wake-up
        of the IO loop and one multiple-ack for all, instead of one each (each wake-up also
        hands the interpreter lock to the IO thread and back)."""
        with self._acks_lock:
            self._acks.append((list(deliveries), after))
            if not now or self._acks_scheduled:
                return
            self._acks_scheduled = True
        self.threadsafe(self._send_acks)

    def send_acks(self, after: Callable[[], None] | None = None) -> None:
        """Send the acks that ``ack_many(now=False)`` held back; then run ``after`` on the IO
        thread, as ``ack_many`` does."""
        self.ack_many([], after)

    def forward(self, delivery: Delivery, queue: str, body: bytes,
                properties: Mapping[str, Any]) -> None:
        """Publish a copy to ``queue`` with a publisher confirm, then ack ``delivery``."""
        self.threadsafe(self._forward, delivery, queue, body, dict(properties))

    def pause(self) -> None:
        """Stop taking deliveries while the store is down; unacked ones stay with us."""
        self.threadsafe(self._pause)

    def resume(self) -> None:
        """Take deliveries again after ``pause``."""
        self.threadsafe(self._resume)

    def begin_stop(self, grace_s: float) -> None:
        """Take no new deliveries; close within ``grace_s`` even if work is still in flight."""
        self.threadsafe(self._begin_stop, grace_s)

    def close(self) -> None:
        """Send held-back acks, close once pending confirms are settled, then end ``run``."""
        self.threadsafe(self._close)

    def every(self, seconds: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the IO thread every ``seconds`` for as long as the loop runs."""
        def tick():
            try:
                fn()
            except Exception:  # noqa: BLE001 - a periodic task must not kill the IO loop
                log.exception("periodic task failed")
            self.ioloop.call_later(seconds, tick)
        self.threadsafe(tick)

    # --- connection ------------------------------------------------------------------------
    def _connect(self) -> None:
        self._reconnect_timer = None
        if self._stopping:
            self._finish()
            return
        self.status = "connecting"
        log.info("connecting to %s", self.url)
        self._connection = pika.SelectConnection(
            self.parameters, on_open_callback=self.on_connection_open,
            on_open_error_callback=self.on_connection_open_error,
            on_close_callback=self.on_connection_closed, custom_ioloop=self.ioloop)

    def on_connection_open(self, connection: pika.SelectConnection) -> None:
        """Open our one channel."""
        log.info("connected to %s", self.url)
        connection.channel(on_open_callback=self.on_channel_open)

    def on_connection_open_error(self, connection: Any, error: BaseException) -> None:
        """The broker could not be reached or refused us: retry later, or give up if fatal."""
        self._connection = None
        if self._stopping:
            self._finish()
        elif _fatal(error):
            self._give_up(f"broker {self.url} refused the connection: {describe_close(error)}")
        else:
            why = f"cannot connect to {self.url}: {describe_close(error)}"
            # Another node may answer at once; wait only once every URL failed in a row.
            self._schedule_reconnect(why, wait=self.endpoints.failed())

    def on_connection_closed(self, connection: Any, reason: BaseException) -> None:
        """Closed by us (finish) or lost (reconnect with backoff)."""
        self._connection = None
        self._channel_gone()
        if self._closing or self._stopping:
            self._finish()
        elif _fatal(reason) and self.status == "declaring":
            self._give_up(f"broker {self.url} refused the topology: {describe_close(reason)}")
        else:
            why = f"connection to {self.url} lost: {describe_close(reason)}"
            self.endpoints.failed()  # its node may be gone: the next URL first
            self._schedule_reconnect(why)

    def _schedule_reconnect(self, why: str, wait: bool = True) -> None:
        delay = self.backoff.next() if wait else 0.0
        self.status = "reconnecting"
        if len(self.endpoints) > 1:
            why += f"; next: {self.url}"
        log.warning("%s; reconnecting in %.1fs", why, delay)
        self._reconnect_timer = self.ioloop.call_later(delay, self._connect)

    def _give_up(self, error: str) -> None:
        self.error = error
        log.error("%s", error)
        self._stopping = True
        if self._connection is not None and self._connection.is_open:
            self._connection.close()
        else:
            self._finish()

    def _finish(self) -> None:
        self.status = "stopped"
        self.ioloop.stop()

    # --- channel ---------------------------------------------------------------------------
    def on_channel_open(self, channel: Any) -> None:
        """Watch the channel, then declare the topology one step at a time."""
        with self._lock:
            self.generation += 1
            self._channel = channel
        self._publish_seq = 0
        self._pending.clear()
        self._unsettled.clear()
        self._consumer_tags.clear()
        channel.add_on_close_callback(self.on_channel_closed)
        channel.add_on_cancel_callback(self.on_consumer_cancelled)
        channel.add_on_return_callback(self.on_message_returned)
        self.status = "declaring"
        self._declare(channel, list(self.topology.declarations()))

    def _declare(self, channel: Any, steps: list[tuple[str, dict]], _frame: Any = None) -> None:
        if channel is not self._channel or not channel.is_open:
            return
        if not steps:
            channel.basic_qos(prefetch_count=self.prefetch, callback=self.on_qos_ok)
            return
        method, kwargs = steps[0]
        getattr(channel, method)(**_declare_kwargs(kwargs),
                                 callback=functools.partial(self._declare, channel, steps[1:]))

    def on_qos_ok(self, _frame: Any) -> None:
        """Prefetch set: switch on publisher confirms (for dead letters and retries)."""
        self._channel.confirm_delivery(ack_nack_callback=self.on_confirm,
                                       callback=self.on_confirm_select_ok)

    def on_confirm_select_ok(self, _frame: Any) -> None:
        """Channel ready: consume unless paused or stopping."""
        self.endpoints.worked()
        self.backoff.reset()
        if self._stopping:
            self._close()
        elif self._paused and not self.topology.partitions:
            self.status = "paused"
        else:
            self._start_consuming()
            if self._paused:
                self.status = "paused"

    def on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        """A closed channel invalidates its delivery tags; the connection goes with it."""
        if channel is not self._channel:
            return
        log.log(logging.INFO if self._closing else logging.WARNING, "channel closed: %s",
                describe_close(reason))
        declaring = self.status == "declaring"
        self._channel_gone()
        if declaring and _fatal(reason):
            self._give_up(f"broker {self.url} refused the topology: {describe_close(reason)}; "
                          "an existing exchange or queue has other settings, or a plugin is "
                          "missing")
            return
        if self._connection is not None and self._connection.is_open:
            self._connection.close()  # on_connection_closed reconnects or finishes

    def _channel_gone(self) -> None:
        with self._lock:
            self._channel = None
        self._pending.clear()
        self._unsettled.clear()
        self._consumer_tags.clear()

    # --- consuming -------------------------------------------------------------------------
    def _start_consuming(self) -> None:
        """Subscribe to every queue we are not subscribed to yet."""
        missing = [q for q in self.queues if q not in self._consumer_tags]
        for queue in missing:
            self._subscribe(queue)
        self.status = "consuming"
        if missing:
            log.info("consuming from %s (prefetch %d) on %s", ", ".join(missing),
                     self.prefetch, self.url)

    def _subscribe(self, queue: str) -> None:
        self._consumer_tags[queue] = self._channel.basic_consume(
            queue, functools.partial(self.on_message, queue), callback=self.on_consume_ok)

    def on_consume_ok(self, _frame: Any) -> None:
        """A subscription holds: later cancels start again from the shortest wait."""
        self._resubscribe_backoff.reset()

    def _cancel_consumers(self) -> None:
        if self._channel is not None and self._channel.is_open:
            for tag in self._consumer_tags.values():
                self._channel.basic_cancel(tag)
        self._consumer_tags.clear()

    def on_consumer_cancelled(self, frame: Any) -> None:
        """The broker cancelled a subscription (queue deleted, leader moved, node going away):
        subscribe again on the same channel after a short wait. Deliveries we hold stay ours
        (their tags belong to the channel, not the subscription). If the queue is gone, the
        broker closes the channel and we reconnect, which declares it again."""
        tag = frame.method.consumer_tag
        queue = next((q for q, t in self._consumer_tags.items() if t == tag), None)
        if queue is None:
            return  # not one of ours any more (we cancelled it ourselves meanwhile)
        del self._consumer_tags[queue]
        delay = self._resubscribe_backoff.next()
        log.warning("the broker cancelled our subscription to %s; subscribing again in "
                    "%.1fs", queue, delay)
        self.ioloop.call_later(delay, functools.partial(self._resubscribe, self._channel))

    def _resubscribe(self, channel: Any) -> None:
        # Only on the channel the cancel came on, and not while paused or stopping: resume
        # (or the next channel) subscribes to whatever is missing.
        if channel is self._channel and channel.is_open and not self._stopping \
                and not self._closing and self.status == "consuming":
            self._start_consuming()

    def on_message(self, queue: str, channel: Any, method: Any, properties: Any,
                   body: bytes) -> None:
        """Hand the delivery to the consumer, tagged with this channel's generation."""
        if channel is not self._channel:
            return
        self._unsettled.add(method.delivery_tag)
        self.on_delivery(Delivery(bytes(body), method.delivery_tag, self.generation, queue,
                                  method.exchange, method.routing_key, bool(method.redelivered),
                                  properties_dict(properties)))

    # --- settling --------------------------------------------------------------------------
    def _current(self, delivery: Delivery) -> bool:
        if delivery.generation == self.generation and self._channel is not None \
                and self._channel.is_open:
            return True
        log.info("not settling delivery %d of channel %d: that channel is gone; the broker "
                 "redelivers it", delivery.tag, delivery.generation)
        return False

    def _send_acks(self) -> None:
        with self._acks_lock:
            requests, self._acks = self._acks, []
            self._acks_scheduled = False
        self._ack_many([d for deliveries, _ in requests for d in deliveries])
        for _, after in requests:
            self._after(after)

    @staticmethod
    def _after(after: Callable[[], None] | None) -> None:
        # Bookkeeping of settled deliveries (counts, logs): never allowed to stop the IO loop.
        if after is None:
            return
        try:
            after()
        except Exception:  # noqa: BLE001 - logged, and the loop carries on
            log.exception("after settling deliveries")

    def _ack_many(self, deliveries: list[Delivery]) -> None:
        tags = sorted(d.tag for d in deliveries if self._current(d))
        if tags:
            # basic.ack(multiple) settles EVERY unsettled tag up to it, so it must stop below
            # the lowest tag still held for another reason (a forwarded copy awaiting its
            # confirm, a delivery not processed yet); the rest are acked one by one.
            held = self._unsettled.difference(tags)
            limit = min(held) if held else tags[-1] + 1
            below = [t for t in tags if t < limit]
            if below:
                self._channel.basic_ack(below[-1], multiple=True)
            for tag in tags[len(below):]:
                self._channel.basic_ack(tag)
            self._unsettled.difference_update(tags)
        self._maybe_finish_close()

    def _forward(self, delivery: Delivery, queue: str, body: bytes, properties: dict) -> None:
        if not self._current(delivery):
            self._maybe_finish_close()
            return
        self._publish_seq += 1
        self._pending[self._publish_seq] = delivery
        # mandatory: a copy no queue takes comes back (on_message_returned), never silently lost
        self._channel.basic_publish("", queue, body, basic_properties(properties),
                                    mandatory=True)

    def on_message_returned(self, channel: Any, method: Any, properties: Any,
                            body: bytes) -> None:
        """A forwarded copy had no queue: drop the channel so nothing is acked on its behalf."""
        log.error("forwarded copy returned by the broker (%s %s, queue %r missing?); "
                  "reopening the channel so the original is redelivered", method.reply_code,
                  method.reply_text, method.routing_key)
        if channel is self._channel and channel.is_open:
            channel.close()

    def on_confirm(self, frame: Any) -> None:
        """Broker confirmed (ack) or refused (nack) forwarded copies: settle their originals."""
        if self._channel is None or not self._channel.is_open:
            return
        confirm = frame.method
        tag = confirm.delivery_tag
        seqs = [s for s in self._pending if s <= tag] if confirm.multiple else [tag]
        acked = isinstance(confirm, pika.spec.Basic.Ack)
        for seq in sorted(seqs):
            delivery = self._pending.pop(seq, None)
            if delivery is None:
                continue
            self._unsettled.discard(delivery.tag)
            if acked:
                self._channel.basic_ack(delivery.tag)
            else:
                log.warning("broker refused forwarded copy of delivery %d; requeueing the "
                            "original", delivery.tag)
                self._channel.basic_nack(delivery.tag, requeue=True)
        self._maybe_finish_close()

    # --- pause, stop, close ----------------------------------------------------------------
    def _pause(self) -> None:
        if self._paused:
            return
        self._paused = True
        if self.status == "consuming":
            self.status = "paused"
            log.warning("paused: not taking deliveries until the store answers")
            if not self.topology.partitions:
                self._cancel_consumers()
            # Partition queues have one active consumer each: cancelling would let a standby
            # overtake the messages we hold, so we keep the subscription; the prefetch window
            # bounds what the broker sends meanwhile, and nothing is acked.

    def _resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self.status == "paused" and not self._stopping and self._channel is not None:
            self._start_consuming()  # whatever is not subscribed (all, or cancelled ones)
            log.info("resumed consuming")

    def _begin_stop(self, grace_s: float) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._reconnect_timer is not None:
            self.ioloop.remove_timeout(self._reconnect_timer)
            self._reconnect_timer = None
        self.status = "stopping"
        log.info("stopping: finishing the message in progress (at most %gs)", grace_s)
        # No basic.cancel: on a single-active-consumer queue it would hand the queue to a
        # standby consumer while we still hold earlier messages. Closing the channel returns
        # them all in order, and only then does the standby take over.
        self.ioloop.call_later(grace_s, self._force_close)
        if self._connection is None:
            self._finish()

    def _close(self) -> None:
        self._stopping = True
        self._closing = True
        self._send_acks()  # held-back acks go out before the channel closes

    def _maybe_finish_close(self) -> None:
        if not self._closing or self._pending:
            return
        if self._connection is not None and self._connection.is_open:
            self._connection.close()  # on_connection_closed → _finish
        elif self._connection is None:
            self._finish()

    def _force_close(self) -> None:
        self._pending.clear()
        self._close()


# --------------------------------------------------------------------------------- publishing
class BrokerRefused(BrokerError):
    """The broker refused us for good (credentials, permissions, a conflicting declaration, a
    missing plugin): trying again, or another node, cannot help."""


def _refusal(message: str, reason: BaseException) -> BrokerError:
    """``BrokerRefused`` if ``reason`` is a refusal for good, else a plain ``BrokerError``."""
    return (BrokerRefused if _fatal(reason) else BrokerError)(message)


def _open_blocking(endpoints: Endpoints) -> pika.BlockingConnection:
    """A connection to the first URL of ``endpoints`` that answers (each tried once, from the
    current one on); BrokerError naming every failure."""
    failures = []
    for _ in range(len(endpoints)):
        url = endpoints.url
        try:
            connection = pika.BlockingConnection(endpoints.parameters)
        except pika.exceptions.AMQPError as exc:
            failures.append(f"{url}: {describe_close(exc)}")
            if _fatal(exc):  # the same credentials would be refused by every node
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
        self._connection = _open_blocking(self._endpoints)
        self.url = self._endpoints.url
        try:
            self._channel = self._connection.channel()
            if topology is not None:
                _declare_blocking(self._channel, topology)
            self._channel.confirm_delivery()
        except pika.exceptions.AMQPError as exc:
            self.close()
            raise _refusal(f"broker {self.url} refused the topology: {describe_close(exc)}",
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


# --------------------------------------------------------------------------------- browsing
# Operations on a queue for ``reactor deadletters``. Browsing uses ``basic.get`` with manual
# acknowledgement: every message taken stays unacked (so the broker hands out each one only
# once per pass) and is returned with ``basic.nack(requeue)`` at the end, in its original
# place. Re-driving publishes the chosen ones with a publisher confirm and acks each only after
# its confirm; whatever is not chosen, or fails, is nacked back. If the connection drops
# half-way the broker requeues every unacked message by itself, so a message is never lost; at
# worst one that was confirmed but whose ack was lost is both re-driven and still in the queue
# (its message id makes the second copy a duplicate for the reactor).
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
    connection = _open_blocking(endpoints)
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
        _declare_blocking(channel, topology)  # the exchange must exist to route
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
