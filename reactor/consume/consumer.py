"""The queue consumer: what happens to each delivery, decided here, carried out by the transport.

One worker thread processes deliveries in arrival order through the shared ``Pipeline`` and
settles each one only after the pipeline returned (so after its commit):

- ``applied`` / ``duplicate`` → ack;
- ``rejected:<reason>`` → a copy to the dead-letter queue with reason, detail, attempts,
  first-seen time and the original routing key and message id as headers, confirmed by the
  broker, then ack; ``invalid_transition`` first goes through the delayed-retry queue
  ``transition_retries`` times (it may be an out-of-order arrival);
- ``retry:<reason>`` → a few quick in-process retries (tenacity: exponential backoff, jitter);
  if the store does not answer at all, the consumer pauses (no new deliveries, nothing acked)
  and resumes when it answers again; if the store answers but this message keeps failing, or
  processing raised unexpectedly, the attempt is counted and the message goes through the
  delayed-retry queue until ``max_attempts``, then to the dead-letter queue as
  ``retries_exhausted``.

Attempts travel in the ``x-reactor-attempts`` header of the copies, so a poison message ends in
the dead-letter queue instead of looping. Tokens never reach headers or logs.

Acks of committed deliveries are held while more deliveries wait and go out together, with
their counts and log lines, at most ``ACK_HOLD_S`` later; before any wait (a retry, an outage
pause, closing) whatever is held goes out first.

With a ``PipelineProcess`` for its pipeline (``reactor consume``'s default), the worker sends
the waiting deliveries to that child process as lists, keeping the next list on its way while
the child applies the last, and settles each list's outcomes exactly as above; its acks go out
as soon as the list is settled (a list is already a batch of acks, and holding them longer only
added latency). A message the child leaves undecided (a retry outcome, an exception) halts it;
the worker then decides that message and everything sent after it one by one, in order, as
above. If the child dies, the consumer stops with exit code 1 and its unsettled deliveries
return to the queue.

Group commit (``batch_size`` > 1; the configuration's default is 50, while this class defaults
to 1 for callers that build it directly): the worker takes what has arrived, up to
``batch_size`` deliveries, waiting at most ``batch_wait_ms`` for a partial batch to fill, and
applies them with ``reactor.engine.batching.GroupCommit`` (one store write for the batch).
Only after that commit are they settled: rejections exactly as above, each on its own, and
the applied and duplicate ones with one multiple-ack that never reaches a delivery still held
for another reason. Whatever the batch could not decide (the store failed mid-batch, a bug)
goes through the one-by-one path above, in order, with its retries and outage pause.
"""
from __future__ import annotations

import logging
import queue as _queue
import signal
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable

from tenacity import (Retrying, retry_if_exception_type, retry_if_result, stop_after_attempt,
                      stop_when_event_set, wait_exponential, wait_random)

from ..domain.errors import ConfigError, PipelineProcessGone
from .health import HealthFile
from ..obs.logs import FIELDS_ATTR, batched, outcome_fields
from ..domain.outcomes import REJECTED, RETRY, Outcome
from ..engine.pipeline_process import PipelineProcess
from ..domain.records import now_iso
from ..domain import tokens
from ..domain.tokens import SECRET_NAMES, body_token, mask_text
from ..broker.base import Delivery
from ..broker.consumer_transport import ConsumerTransport
from ..broker.topology import Topology

log = logging.getLogger(__name__)

PREFIX = "x-reactor-"
ATTEMPTS = PREFIX + "attempts"            # failed deliveries so far (int)
FIRST_SEEN = PREFIX + "first-seen"        # when the reactor first processed the message
ROUTING_KEY = PREFIX + "routing-key"      # routing key it was originally published with
EXCHANGE = PREFIX + "exchange"            # exchange it was originally published to
QUEUE = PREFIX + "queue"                  # main queue it was consumed from
MESSAGE_ID = PREFIX + "message-id"        # its AMQP message id (or none)
REASON = PREFIX + "reason"                # dead letters: the rejection reason
DETAIL = PREFIX + "detail"                # dead letters: what was wrong (tokens masked)
OUTCOME = PREFIX + "outcome"              # dead letters: the outcome label
DEAD_LETTERED_AT = PREFIX + "dead-lettered-at"
RETRY_REASON = PREFIX + "retry-reason"    # delayed retries: why the last attempt failed
# The broker's own redelivery counter (quorum queues): already folded into ATTEMPTS.
_BROKER_COUNT = "x-delivery-count"
DETAIL_CHARS = 1000

ACK = "ack"
RETRY_LATER = "retry_later"
DEAD_LETTER = "dead_letter"
INTERNAL_ERROR = "internal_error"
RETRIES_EXHAUSTED = "retries_exhausted"
INVALID_TRANSITION = "invalid_transition"
# The longest an ack of a committed delivery is held back to go out with later ones.
ACK_HOLD_S = 0.01


@dataclass(frozen=True)
class Limits:
    """How often and how long to retry (from configuration, plus in-process retry tuning)."""

    max_attempts: int = 5
    transition_retries: int = 3
    local_retries: int = 4          # in-process tries of a retry outcome before looking closer
    local_wait_max_s: float = 2.0   # cap of the in-process backoff
    probe_wait_max_s: float = 5.0   # cap of the backoff between store probes in an outage

    @classmethod
    def from_settings(cls, settings: Any) -> "Limits":
        """Limits from ``max_attempts`` and ``transition_retries``."""
        return cls(max_attempts=settings.max_attempts,
                   transition_retries=settings.transition_retries)


@dataclass(frozen=True)
class Action:
    """What to do with a delivery once its outcome is known."""

    kind: str                  # ACK, RETRY_LATER or DEAD_LETTER
    reason: str | None = None
    detail: str = ""


def attempt_number(delivery: Delivery) -> int:
    """Which delivery of this message this is: 1 + failed attempts recorded so far."""
    headers = delivery.headers
    # Quorum queues count redeliveries (crashes, nacks) themselves; count those too.
    return 1 + _count(headers.get(ATTEMPTS)) + _count(headers.get(_BROKER_COUNT))


def _count(value: Any) -> int:
    # A sender controls these headers; anything but a small non-negative int counts as 0.
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(value, 0), 1_000_000)


def decide(outcome: Outcome, attempt: int, limits: Limits) -> Action:
    """The action for ``outcome`` on delivery number ``attempt`` of a message."""
    if outcome.ok:
        return Action(ACK)
    if outcome.kind == REJECTED:
        if outcome.reason == INVALID_TRANSITION and attempt <= limits.transition_retries:
            return Action(RETRY_LATER, outcome.reason, outcome.detail)
        return Action(DEAD_LETTER, outcome.reason, outcome.detail)
    if attempt < limits.max_attempts:
        return Action(RETRY_LATER, outcome.reason, outcome.detail)
    return Action(DEAD_LETTER, RETRIES_EXHAUSTED,
                  f"{attempt} attempts failed; last: {outcome.label}: {outcome.detail}")


def forwarded_properties(delivery: Delivery, action: Action, attempt: int, outcome_label: str,
                         now: str | None = None) -> dict:
    """Properties of the copy of ``delivery`` that ``action`` sends on (body unchanged)."""
    now = now or now_iso()
    # A header named like a secret is never copied onward.
    headers = {k: v for k, v in delivery.headers.items() if k != _BROKER_COUNT
               and not any(s in str(k).lower() for s in SECRET_NAMES)}
    # Where it came from is kept from the first delivery: later ones arrive via the retry queue.
    headers.setdefault(FIRST_SEEN, now)
    # Copies for the operator (the properties keep the originals): masked like every
    # dead-letter record, in case a sender put a token there.
    headers.setdefault(ROUTING_KEY, mask_text(delivery.routing_key))
    headers.setdefault(EXCHANGE, delivery.exchange)
    headers[ATTEMPTS] = attempt
    headers[QUEUE] = delivery.queue
    detail = scrub(action.detail or "", delivery)[:DETAIL_CHARS]
    if action.kind == RETRY_LATER:
        headers[RETRY_REASON] = action.reason
    else:
        headers.update({REASON: action.reason, DETAIL: detail, OUTCOME: outcome_label,
                        MESSAGE_ID: mask_text(delivery.message_id or ""),
                        DEAD_LETTERED_AT: now})
    props = {k: v for k, v in delivery.properties.items() if k != "headers"}
    props["headers"] = headers
    props["delivery_mode"] = 2
    return props


def _backoff(first_s: float, cap_s: float):
    # Exponential with random jitter, so consumers hit by one outage do not retry in lockstep.
    return wait_exponential(multiplier=first_s, max=cap_s) + wait_random(0, first_s)


def scrub(text: str, delivery: Delivery) -> str:
    """``text`` with token-like values and the message's own token masked (for headers, logs)."""
    return tokens.scrub(text, [body_token(delivery.body)])


_STOP = object()


class Consumer:
    """Consume events with the pipeline; ``run`` returns the process exit code."""

    def __init__(self, pipeline: Any, probe_store: Callable[[], None], url: str,
                 topology: Topology, prefetch: int, limits: Limits, *,
                 queues: list[str] | None = None, grace_s: float = 30.0,
                 health: HealthFile | None = None, health_interval_s: float = 5.0,
                 batch_size: int = 1, batch_wait_s: float = 0.0,
                 metrics: Any | None = None):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"bad value for 'batch_size': {batch_size!r} (1 = one commit per "
                              "message, N > 1 = group commit of up to N)")
        self.pipeline = pipeline
        self.metrics = metrics  # a reactor.obs.metrics.Metrics, or None
        self._taken_at = time.perf_counter()  # when the worker took the current delivery
        # The broker never has more than ``prefetch`` of our deliveries out: no batch can be
        # larger, so a larger setting just means "as many as the prefetch window allows".
        self.batch_size = min(batch_size, prefetch)
        self.batch_wait_s = batch_wait_s
        self._group = None
        # The pipeline in a child process: lists of deliveries go to it, kept two deep.
        self._remote = pipeline if isinstance(pipeline, PipelineProcess) else None
        if batch_size > 1 and self._remote is None:
            from ..engine.batching import GroupCommit

            self._group = GroupCommit(pipeline)
        self.probe_store = probe_store
        self.topology = topology
        self.limits = limits
        self.grace_s = grace_s
        self.health = health
        self.health_interval_s = health_interval_s
        self.counts: Counter[str] = Counter()
        self.transport = ConsumerTransport(url, topology, queues or topology.main_queues,
                                           prefetch, self._inbox_put)
        self._inbox: _queue.Queue = _queue.Queue()
        self._stop = threading.Event()
        self._outage = False
        self._worker = threading.Thread(target=self._work if self._remote is None
                                        else self._work_remote, name="reactor-worker",
                                        daemon=True)
        # Acks of committed deliveries are held back while more deliveries wait, and sent
        # together once this many are held, the worker runs out of work, or the first held
        # one would otherwise wait ACK_HOLD_S: one ack per delivery cost a wake-up of the IO
        # loop and a round trip to the broker each (about half of the CPU of
        # one-commit-per-message consuming), while slow commits gain nothing from holding.
        # A crash meanwhile only means redeliveries, which the duplicate keys make no-ops.
        self.ack_every = max(1, prefetch // 4)
        self._held_since = 0.0
        # One bookkeeping call per held ack (its count, metrics, log line): run once it went out.
        self._held_books: list[Callable[[], None]] = []
        self.exit_code = 0

    # --- lifecycle -------------------------------------------------------------------------
    def run(self, install_signals: bool = True) -> int:
        """Consume until stopped (SIGTERM/SIGINT or ``request_stop``); 0 on a clean stop."""
        if self.health is not None:
            self.health.write("starting", self.counts)  # an unwritable path fails here, loudly
            self.transport.every(self.health_interval_s, self._write_health)
        if self.metrics is not None:
            self.transport.every(1.0, self._update_gauges)
        if self._remote is not None:
            # Noticed within a second even while no delivery arrives to find it out.
            self.transport.every(1.0, self._check_remote)
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self._worker.start()
        try:
            self.transport.run()
        finally:
            self._stop.set()
            self._inbox.put(_STOP)
            self._worker.join(timeout=5)
            if self.health is not None:
                self.health.remove()
        log.info("stopped; outcomes: %s", dict(self.counts) or "none")
        if self.transport.error:
            return 2
        return self.exit_code

    def request_stop(self) -> None:
        """Stop taking deliveries, finish the one in progress, close (safe from any thread)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._inbox.put(_STOP)
        self.transport.begin_stop(self.grace_s)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        self.request_stop()

    def _check_remote(self) -> None:
        gone = self._remote.gone()
        if gone is not None:
            self._pipeline_gone(gone)

    def _pipeline_gone(self, gone: PipelineProcessGone) -> None:
        """Stop with exit code 1: the pipeline process is gone (reported once, by whichever
        thread finds out first)."""
        if not self.exit_code:
            log.error("%s: stopping; unsettled deliveries return to the queue", gone)
        self.exit_code = 1
        self.request_stop()

    def _write_health(self) -> None:
        status = "paused" if self._outage else self.transport.status
        self.health.write(status, self.counts)

    def _update_gauges(self) -> None:
        # The transport's status is the truth about the broker; read-only, so any thread.
        self.metrics.set_broker_connected(self.transport.status in ("declaring", "consuming",
                                                                     "paused"))
        self.metrics.set_store_connected(not self._outage)

    # --- worker ----------------------------------------------------------------------------
    def _inbox_put(self, delivery: Delivery) -> None:
        if self.metrics is not None:
            self.metrics.in_flight.inc()
        self._inbox.put(delivery)

    def _work(self) -> None:
        stopping = False
        while not stopping:
            item = self._inbox.get()
            if item is _STOP:
                break
            batch = [item]
            if self._group is not None:
                stopping = self._fill(batch)
            self._taken_at = time.perf_counter()
            taken = len(batch)
            # Not started before the stop, or from a dead channel: leave it to the broker.
            batch = [d for d in batch if not self._stop.is_set() and self.transport.is_current(d)]
            if not batch:
                self._done(taken)
                self._settle_held(0.0)
                continue
            try:
                if self._group is None:
                    self._handle(batch[0])
                else:
                    self._handle_batch(batch)
            except Exception as exc:  # noqa: BLE001 - a bug here must not wedge the consumer
                log.error("internal error handling delivery %d: %s", batch[0].tag,
                          mask_text("".join(traceback.format_exception(exc))))
                self.exit_code = 1
                self.request_stop()
            self._done(taken)
            self._settle_held(time.perf_counter() - self._taken_at)
        self._send_acks()
        self.transport.close()

    def _work_remote(self) -> None:
        """The worker with the pipeline in a child process: the waiting deliveries go to it as
        lists, two deep, so it applies one while the outcomes of the other are settled here."""
        sent: deque[tuple[list[Delivery], float]] = deque()
        stopping = False
        group = self.batch_size > 1
        size = self.batch_size if group else self.ack_every
        # With group commit on a fast store, a second list goes out only once half a list
        # waits: a smaller one would wait behind the first anyway and pay a commit of its own,
        # so at moderate load batches stay larger and latency lower (SQLite at 4,000 msgs/s:
        # p99 12-15 ms against 14-22 ms), and under full load the child still always has the
        # next list. On a slow store (a list takes ACK_HOLD_S or more) waiting for half a list
        # only added latency (a MongoDB-wire store at 56 msgs/s: p99 85-107 ms against
        # 43-61 ms).
        half = max(1, size // 2) if group else 1
        last_turn_s = 0.0
        try:
            while sent or not stopping:
                ahead = half if last_turn_s < ACK_HOLD_S else 1
                if not stopping and (not sent or (len(sent) < 2
                                                  and self._inbox.qsize() >= ahead)):
                    batch, stopping = self._take(size, block=not sent)
                    if batch:
                        self._remote.submit([(d.body, d.message_id) for d in batch], group)
                        sent.append((batch, time.perf_counter()))
                        continue
                    if not sent:
                        continue
                batch, self._taken_at = sent.popleft()
                outcomes = self._remote.collect()
                last_turn_s = time.perf_counter() - self._taken_at
                self._settle_remote(batch, outcomes, sent)
                self._send_acks()
        except PipelineProcessGone as exc:
            self._pipeline_gone(exc)
        except Exception as exc:  # noqa: BLE001 - a bug here must not wedge the consumer
            log.error("internal error: %s; stopping (unsettled deliveries return to the queue)",
                      mask_text("".join(traceback.format_exception(exc))))
            self.exit_code = 1
            self.request_stop()
        self._send_acks()
        self.transport.close()

    def _take(self, size: int, block: bool) -> tuple[list[Delivery], bool]:
        """Up to ``size`` waiting deliveries (waiting for the first if ``block``), less those
        the broker redelivers anyway; and whether the stop marker came."""
        try:
            item = self._inbox.get(block)
        except _queue.Empty:
            return [], False
        if item is _STOP:
            return [], True
        batch = [item]
        stopping = self._fill(batch, size, self.batch_wait_s if block else 0.0)
        kept = [d for d in batch if not self._stop.is_set() and self.transport.is_current(d)]
        self._done(len(batch) - len(kept))
        return kept, stopping

    def _settle_remote(self, batch: list[Delivery], outcomes: list[Outcome | None],
                       sent: deque) -> None:
        """Settle a list the child process sent back; if it left messages undecided, collect
        the lists behind them (sent back untouched) and decide all those one by one, in order."""
        self._settle_decided(batch, outcomes)
        settled = len(batch)
        if self._remote.halted:
            undecided = [d for d, o in zip(batch, outcomes) if o is None]
            while sent:
                later, _ = sent.popleft()
                self._remote.collect()
                undecided += later
                settled += len(later)
            self._remote.resume()
            for delivery in undecided:
                if not self._stop.is_set():
                    self._handle(delivery)
        self._done(settled)

    def _settle_held(self, last_turn_s: float) -> None:
        """Send the held acks unless more deliveries wait and holding them through another
        turn as long as the last one keeps them within ``ack_every`` and ``ACK_HOLD_S``."""
        if not self._held_books:
            return
        if len(self._held_books) >= self.ack_every or self._inbox.empty() or \
                time.perf_counter() - self._held_since + last_turn_s >= ACK_HOLD_S:
            self._send_acks()

    def _send_acks(self) -> None:
        """Send the held acks; then, on the IO thread, their bookkeeping in one go."""
        if not self._held_books:
            return
        books, self._held_books = self._held_books, []
        self.transport.send_acks(after=lambda: self._book_all(books))

    def _hold(self, deliveries: list[Delivery], books: list[Callable[[], None]]) -> None:
        """Hand ``deliveries`` to the transport to ack later, their ``books`` (one each) to
        run after."""
        self.transport.ack_many(deliveries, now=False)
        if not self._held_books:
            self._held_since = time.perf_counter()
        self._held_books += books

    def _done(self, count: int) -> None:
        """``count`` deliveries are out of the worker's hands (settled, or left to the broker)."""
        if self.metrics is not None:
            self.metrics.in_flight.dec(count)

    def _observe(self, delivery: Delivery, outcome: Outcome, attempt: int,
                 action: str, latency: float | None = None) -> dict:
        """Count the outcome in the metrics; the structured log fields of the message."""
        if latency is None:
            latency = time.perf_counter() - self._taken_at
        if self.metrics is not None:
            self.metrics.observe(outcome, latency)
            self._update_gauges()  # a scrape right after this message sees them current
        return {FIELDS_ATTR: outcome_fields(outcome, message_id=delivery.message_id,
                                            attempt=attempt, latency_s=latency,
                                            action=action)}

    def _fill(self, batch: list[Delivery], size: int | None = None,
              wait_s: float | None = None) -> bool:
        """Add waiting deliveries to ``batch`` up to ``size`` (``batch_size``), waiting at most
        ``wait_s`` (``batch_wait_s``) for more; True if the stop marker came instead."""
        size = self.batch_size if size is None else size
        deadline = time.monotonic() + (self.batch_wait_s if wait_s is None else wait_s)
        while len(batch) < size:
            try:
                item = self._inbox.get_nowait()
            except _queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._inbox.get(timeout=remaining)
                except _queue.Empty:
                    break
            if item is _STOP:
                return True
            batch.append(item)
        return False

    def _handle_batch(self, deliveries: list[Delivery]) -> None:
        """Group commit of ``deliveries``; each settled only after its commit."""
        from ..engine.batching import Item

        try:
            outcomes = self._group.process([Item(d.body, d.message_id) for d in deliveries])
        except Exception as exc:  # noqa: BLE001 - a bug in the batch path: go one by one
            log.error("group commit of %d deliveries raised %s; processing them one by one",
                      len(deliveries), mask_text("".join(traceback.format_exception(exc))))
            outcomes = [None] * len(deliveries)
        self._settle_decided(deliveries, outcomes)
        for delivery, outcome in zip(deliveries, outcomes):
            if outcome is None and not self._stop.is_set():
                self._handle(delivery)

    def _settle_decided(self, deliveries: list[Delivery],
                        outcomes: list[Outcome | None]) -> None:
        """Settle the deliveries whose outcome is known (``None`` = undecided): acks held
        together, rejections and retries each on its own."""
        acks, books = [], []
        for delivery, outcome in zip(deliveries, outcomes):
            if outcome is None:
                continue
            attempt = attempt_number(delivery)
            action = decide(outcome, attempt, self.limits)
            if action.kind == ACK:
                books.append(self._acked(delivery, outcome, attempt))
                acks.append(delivery)
            else:  # a copy to the retry or dead-letter queue, acked on its own confirm
                self._settle(delivery, action, attempt, outcome)
        if acks:
            self._hold(acks, books)

    def _handle(self, delivery: Delivery) -> None:
        attempt = attempt_number(delivery)
        while True:
            outcome = self._process(delivery)
            if outcome is None:
                return  # stopping mid-retry: not settled, the broker redelivers it
            if outcome.kind != RETRY or self._store_answers():
                break
            if not self._ride_out_outage():
                return
        action = decide(outcome, attempt, self.limits)
        self._settle(delivery, action, attempt, outcome)

    def _process(self, delivery: Delivery) -> Outcome | None:
        """The outcome, after quick in-process retries of transient (retry) outcomes."""
        outcome = self._process_once(delivery)
        if outcome.kind == RETRY:
            self._send_acks()  # what was committed is settled before any wait
        if outcome.kind == RETRY and outcome.reason != INTERNAL_ERROR:
            # Only a transient failure pays for the retry machinery; its first try is the one
            # just made, so the number of tries and the backoff are the configured ones.
            tries = [outcome]
            retrying = Retrying(
                stop=stop_after_attempt(self.limits.local_retries)
                | stop_when_event_set(self._stop),
                wait=_backoff(0.1, self.limits.local_wait_max_s),
                retry=retry_if_result(lambda o: o.kind == RETRY and o.reason != INTERNAL_ERROR),
                sleep=self._stop.wait, retry_error_callback=lambda state: state.outcome.result())
            outcome = retrying(lambda: tries.pop() if tries else self._process_once(delivery))
        if outcome.kind == RETRY and self._stop.is_set():
            return None
        return outcome

    def _process_once(self, delivery: Delivery) -> Outcome:
        try:
            return self.pipeline.process(delivery.body, delivery.message_id)
        except PipelineProcessGone:
            raise  # not this message's fault: the worker stops the consumer
        except Exception as exc:  # noqa: BLE001 - unexpected: counted as a failed attempt
            text = scrub(f"{type(exc).__name__}: {exc}", delivery)
            log.error("processing delivery %d (message id %s) raised %s", delivery.tag,
                      delivery.message_id,
                      scrub("".join(traceback.format_exception(exc)).rstrip(), delivery))
            return Outcome(RETRY, INTERNAL_ERROR, text)

    def _store_answers(self) -> bool:
        try:
            self.probe_store()
        except Exception as exc:  # noqa: BLE001 - any failure means "not answering"
            log.warning("store does not answer: %s", mask_text(str(exc)))
            return False
        return True

    def _ride_out_outage(self) -> bool:
        """Pause consuming until the store answers again; False if stopped meanwhile."""
        self._outage = True
        self.transport.pause()
        log.warning("store unavailable: paused consuming; probing until it answers")
        probing = Retrying(retry=retry_if_exception_type(Exception),
                           wait=_backoff(0.5, self.limits.probe_wait_max_s),
                           stop=stop_when_event_set(self._stop), sleep=self._stop.wait,
                           reraise=True)
        try:
            probing(self.probe_store)
        except Exception:  # noqa: BLE001 - only reached when stopping
            return False
        finally:
            self._outage = False
        log.info("store answers again: resuming")
        self.transport.resume()
        return not self._stop.is_set()

    def _acked(self, delivery: Delivery, outcome: Outcome,
               attempt: int) -> Callable[[], None]:
        """The bookkeeping of a delivery being acked (its count, metrics and log line), to run
        on the IO thread right after the ack: the worker meanwhile starts on the next
        delivery, and the IO thread mostly runs while the worker waits for the store."""
        latency = time.perf_counter() - self._taken_at

        def book() -> None:
            self.counts[outcome.label] += 1
            extra = self._observe(delivery, outcome, attempt, ACK, latency)
            log.info("%s: %s (message id %s)", outcome.label, mask_text(outcome.detail),
                     delivery.message_id, extra=extra)
        return book

    @staticmethod
    def _book_all(books: list[Callable[[], None]]) -> None:
        # One write for the batch's lines: on the embedded store a write per line cost ~10%
        # of the consumer's throughput.
        with batched():
            for book in books:
                book()

    def _settle(self, delivery: Delivery, action: Action, attempt: int,
                outcome: Outcome) -> None:
        if action.kind == ACK:
            self._hold([delivery], [self._acked(delivery, outcome, attempt)])
            return
        self.counts[f"{action.kind}:{action.reason}"] += 1
        props = forwarded_properties(delivery, action, attempt, outcome.label)
        extra = self._observe(delivery, outcome, attempt, action.kind)
        if action.kind == RETRY_LATER:
            if self.metrics is not None:
                self.metrics.retried(action.reason)
            target = self.topology.retry_queue_for(delivery.queue)
            log.info("%s on attempt %d: retrying after %d ms (message id %s): %s",
                     outcome.label, attempt, self.topology.retry_delay_ms,
                     delivery.message_id, scrub(outcome.detail, delivery), extra=extra)
        else:
            if self.metrics is not None:
                self.metrics.dead_lettered(action.reason)
            target = self.topology.dead_letter_queue
            log.warning("dead-lettering (%s) after %d attempt(s) (message id %s): %s",
                        action.reason, attempt, delivery.message_id,
                        scrub(action.detail, delivery), extra=extra)
        self.transport.forward(delivery, target, delivery.body, props)

