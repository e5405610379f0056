"""The queue consumer: deliveries in, each settled only after the pipeline decided it.

The parts, each in its own module:

- the connection (``reactor.broker.base.ConsumingConnection``, built by the factory the consumer
  is given) receives deliveries on its IO thread and puts them in the ``inbox``;
- the ``worker`` thread takes them in lists, runs them through the ``runner`` (the pipeline in
  process or in a child process, ``reactor.engine.runner``), and settles each one (``settle``:
  ``decide``, acks held together, copies to the delayed-retry and dead-letter queues), deciding
  an undecided message on its own with quick retries and outage riding (``retries``);
- ``books`` counts, logs, measures and writes the health file.

Group commit (``batch_size`` > 1; the configuration's default is 50, while this class defaults
to 1 for callers that build it directly): the worker takes what has arrived, up to
``batch_size`` deliveries, waiting at most ``batch_wait_s`` for a partial list to fill, and the
runner applies them with one store write. If the pipeline process dies, the consumer stops
with exit code 1 and its unsettled deliveries return to the queue.
"""
from __future__ import annotations

import logging
import signal
import threading
from collections import Counter
from typing import Any, Callable

from ..broker.base import ConnectionFactory
from ..domain.errors import ConfigError
from ..engine.runner import Runner
from .books import Books
from .health import HealthFile
from .inbox import Inbox
from .retries import Retries
from .settle import AckHold, Limits, Routes, Settler
from .worker import Pace, Worker

log = logging.getLogger(__name__)


class Consumer:
    """Consume events with the runner's pipeline; ``run`` returns the process exit code."""

    def __init__(self, runner: Runner, probe_store: Callable[[], None],
                 connect: ConnectionFactory, topology: Routes, prefetch: int, limits: Limits, *,
                 queues: list[str] | None = None, grace_s: float = 30.0,
                 health: HealthFile | None = None, health_interval_s: float = 5.0,
                 batch_size: int = 1, batch_wait_s: float = 0.0, metrics: Any | None = None):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"bad value for 'batch_size': {batch_size!r} (1 = one commit per "
                              "message, N > 1 = group commit of up to N)")
        self.runner = runner
        self.grace_s = grace_s
        self.health = health
        self.health_interval_s = health_interval_s
        self.exit_code = 0
        self._stop = threading.Event()
        self.books = Books(metrics, health, lambda: self.connection.status,
                           lambda: self.retries.outage)
        self.inbox = Inbox(self.books.received)
        self.connection = connect(queues or topology.main_queues, prefetch, self.inbox.put)
        self.retries = Retries(limits, self._stop, probe_store, self.connection)
        # The broker never has more than ``prefetch`` of our deliveries out: no list can be
        # larger, so a larger setting just means "as many as the prefetch window allows".
        self.pace = Pace.of(min(batch_size, prefetch), batch_wait_s, prefetch, runner.depth)
        self.acks = AckHold(self.connection, self.pace.ack_every, self.pace.hold_s,
                            self.books.run)
        settler = Settler(self.connection, topology, limits, self.books, self.acks)
        self.worker = Worker(self.inbox, runner, self.connection, settler, self.acks,
                             self.retries, self.books, self.pace, self._stop, self._fail)
        self._thread = threading.Thread(target=self.worker.run, name="reactor-worker",
                                        daemon=True)

    @property
    def counts(self) -> Counter[str]:
        """Settled messages so far, by outcome label or action."""
        return self.books.counts

    def run(self, install_signals: bool = True) -> int:
        """Consume until stopped (SIGTERM/SIGINT or ``request_stop``); 0 on a clean stop."""
        if self.health is not None:
            self.health.write("starting", self.counts)  # an unwritable path fails here, loudly
            self.connection.every(self.health_interval_s, self.books.write_health)
        if self.books.metrics is not None:
            self.connection.every(1.0, self.books.update_gauges)
        # A pipeline process that died is noticed within a second even while no delivery
        # arrives to find it out.
        self.connection.every(1.0, self._check_runner)
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self._thread.start()
        try:
            self.connection.run()
        finally:
            self._stop.set()
            self.inbox.stop()
            self._thread.join(timeout=5)
            if self.health is not None:
                self.health.remove()
        log.info("stopped; outcomes: %s", dict(self.counts) or "none")
        if self.connection.error:
            return 2
        return self.exit_code

    def request_stop(self) -> None:
        """Stop taking deliveries, finish the one in progress, close (safe from any thread)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.inbox.stop()
        self.connection.begin_stop(self.grace_s)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        self.request_stop()

    def _check_runner(self) -> None:
        gone = self.runner.gone()
        if gone is not None:
            self._fail(f"{gone}: stopping; unsettled deliveries return to the queue", True)

    def _fail(self, message: str, only_first: bool) -> None:
        """Stop with exit code 1, logging ``message`` (``only_first``: unless a failure was
        already reported, as when both threads find the pipeline process gone)."""
        if not (only_first and self.exit_code):
            log.error("%s", message)
        self.exit_code = 1
        self.request_stop()
