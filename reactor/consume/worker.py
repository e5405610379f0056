"""The consumer's worker thread, one loop whichever runner runs the pipeline: take a list of
deliveries → ``runner`` → settle each delivery only after the runner returned (so after its
commit).

With a runner of depth 2 (the pipeline process), the next list is on its way while the runner
applies the last, and its acks go out as soon as the list is settled (a list is already a
batch of acks); in process, acks are held across lists (``settle.AckHold``).

The one rule for an undecided message (the runner gave it no outcome, or a retry): it is
decided on its own after the rest of its list is settled, one by one in delivery order, with
quick retries of a transient failure, the consumer paused while the store does not answer, and
then its retry or dead letter (``settle.decide``). Before that, every list already on its way
is collected and settled, and the runner releases its hold, so nothing the runner applied can
overtake an undecided message of its job (the runner holds back a job's later messages, as
``reactor.engine.hold`` says). Per job, not from the first undecided message on: a message the
store or a bug failed on says nothing about other jobs' messages, which the list committed
alongside it; halting them would only re-run committed messages as duplicates.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Callable

from ..broker.base import ConsumingConnection, Delivery
from ..domain.errors import PipelineProcessGone
from ..domain.outcomes import Kind, Outcome, Reason
from ..domain.tokens import mask_text
from ..engine.pipeline import Item
from ..engine.runner import Runner
from .books import Books
from .inbox import Inbox
from .retries import Retries
from .settle import ACK_HOLD_S, AckHold, Settler, attempt_number, scrub, undecided

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pace:
    """How the worker takes lists and holds acks."""

    size: int         # deliveries per list
    wait_s: float     # how long a partial list waits to fill
    depth: int        # lists on their way at once
    ahead: int        # deliveries that must wait before a second list goes out after a fast turn
    ack_every: int    # held acks that go out at once
    hold_s: float     # the longest an ack is held for later ones

    @classmethod
    def of(cls, batch_size: int, batch_wait_s: float, prefetch: int, depth: int) -> "Pace":
        """The pace for group commit of ``batch_size`` (1 = a commit per message)."""
        ack_every = max(1, prefetch // 4)
        group = batch_size > 1
        # Lists that overlap carry a commit per message in lists of an ack batch: one turn of
        # the runner each, not one per message.
        size = batch_size if group or depth == 1 else ack_every
        # With group commit on a fast store, a second list goes out only once half a list
        # waits: a smaller one would wait behind the first anyway and pay a commit of its own,
        # so batches stay larger and latency lower; on a slow store (a turn takes ACK_HOLD_S
        # or more) that wait only adds latency, so there the next list goes at once.
        ahead = max(1, size // 2) if group else 1
        return cls(size, batch_wait_s, depth, ahead, ack_every, ACK_HOLD_S if depth == 1 else 0.0)


@dataclass(frozen=True)
class Turn:
    """A list of deliveries on its way through the runner, and when it was taken."""

    deliveries: list[Delivery]
    taken_at: float


class Worker:
    """Takes lists from the inbox, runs them through the runner, settles every delivery."""

    def __init__(self, inbox: Inbox, runner: Runner, connection: ConsumingConnection,
                 settler: Settler, acks: AckHold, retries: Retries, books: Books, pace: Pace,
                 stop: threading.Event, fail: Callable[[str, bool], None]):
        self.inbox = inbox
        self.runner = runner
        self.connection = connection
        self.settler = settler
        self.acks = acks
        self.retries = retries
        self.books = books
        self.pace = pace
        self.stop = stop
        self.fail = fail  # stop the consumer with exit code 1: (message, only if first failure)

    def run(self) -> None:
        """The loop, until the stop marker and every list on its way is settled."""
        try:
            self._loop()
        except PipelineProcessGone as exc:
            self.fail(f"{exc}: stopping; unsettled deliveries return to the queue", True)
        except Exception as exc:  # noqa: BLE001 - a bug here must not wedge the consumer
            self.fail("internal error: " + mask_text("".join(traceback.format_exception(exc)))
                      + "; stopping (unsettled deliveries return to the queue)", False)
        self.acks.send()
        self.connection.close()

    def _loop(self) -> None:
        on_way: deque[Turn] = deque()
        stopping = False
        last_turn_s = 0.0
        while on_way or not stopping:
            if not stopping and self._room(on_way, last_turn_s):
                deliveries, stopping = self._take(block=not on_way)
                if deliveries:
                    self.runner.submit([Item(d.body, d.message_id) for d in deliveries])
                    on_way.append(Turn(deliveries, time.perf_counter()))
                    continue
                if not on_way:
                    self.acks.after_turn(0.0, self.inbox.waiting() > 0)
                    continue
            turn = on_way.popleft()
            outcomes = self._collect(turn)
            last_turn_s = time.perf_counter() - turn.taken_at
            self._settle(turn, outcomes, on_way)
            self.acks.after_turn(last_turn_s, self.inbox.waiting() > 0)

    def _room(self, on_way: deque[Turn], last_turn_s: float) -> bool:
        """Whether to take another list now."""
        if not on_way:
            return True
        ahead = self.pace.ahead if last_turn_s < ACK_HOLD_S else 1
        return len(on_way) < self.pace.depth and self.inbox.waiting() >= ahead

    def _take(self, block: bool) -> tuple[list[Delivery], bool]:
        """A list of waiting deliveries, less those the broker redelivers anyway (not started
        before the stop, or from a channel that is gone); and whether the stop marker came."""
        taken, stopping = self.inbox.take(self.pace.size, block,
                                          self.pace.wait_s if block else 0.0)
        kept = [d for d in taken if not self.stop.is_set() and self.connection.is_current(d)]
        self.books.done(len(taken) - len(kept))
        return kept, stopping

    def _collect(self, turn: Turn) -> list[Outcome | None]:
        """The runner's outcomes of ``turn``; what it raised becomes undecided outcomes."""
        try:
            return self.runner.collect()
        except PipelineProcessGone:
            raise  # not these messages' fault: the consumer stops
        except Exception as exc:  # noqa: BLE001 - each message is then decided on its own
            if len(turn.deliveries) == 1:
                return [self._internal_error(turn.deliveries[0], exc)]
            log.error("processing %d deliveries raised %s; processing them one by one",
                      len(turn.deliveries), mask_text("".join(traceback.format_exception(exc))))
            return [None] * len(turn.deliveries)

    def _settle(self, turn: Turn, outcomes: list[Outcome | None], on_way: deque[Turn]) -> None:
        """Settle a list; then, if it left messages undecided, the lists on their way, and the
        undecided messages of all of them one by one, in order."""
        self.settler.settle_decided(turn.deliveries, outcomes, turn.taken_at)
        left = [(d, o, turn.taken_at) for d, o in zip(turn.deliveries, outcomes) if undecided(o)]
        settled = len(turn.deliveries)
        if left:
            while on_way:
                later = on_way.popleft()
                later_outcomes = self._collect(later)
                self.settler.settle_decided(later.deliveries, later_outcomes, later.taken_at)
                left += [(d, o, later.taken_at)
                         for d, o in zip(later.deliveries, later_outcomes) if undecided(o)]
                settled += len(later.deliveries)
            self.runner.release()
            for delivery, first, taken_at in left:
                if not self.stop.is_set():
                    self._decide_alone(delivery, first, taken_at)
        self.books.done(settled)

    def _decide_alone(self, delivery: Delivery, first: Outcome | None, taken_at: float) -> None:
        """Decide one undecided message on its own (``first``: its outcome so far, a retry) and
        settle it; unsettled if the consumer stops meanwhile (the broker redelivers it)."""
        attempt = attempt_number(delivery)
        outcome = first
        while True:
            if outcome is None:
                outcome = self._try_once(delivery)
            if outcome.kind == Kind.RETRY:
                self.acks.send()  # what was committed is settled before any wait
                outcome = self.retries.again(outcome, lambda: self._try_once(delivery))
                if outcome is None:
                    return
            if outcome.kind != Kind.RETRY or self.retries.store_answers():
                break
            if not self.retries.ride_out():
                return
            outcome = None
        self.settler.settle(delivery, outcome, attempt, taken_at)

    def _try_once(self, delivery: Delivery) -> Outcome:
        """The outcome of ``delivery`` processed alone, a list of one."""
        try:
            [outcome] = self.runner.process([Item(delivery.body, delivery.message_id)])
        except PipelineProcessGone:
            raise
        except Exception as exc:  # noqa: BLE001 - unexpected: counted as a failed attempt
            return self._internal_error(delivery, exc)
        finally:
            # Nothing is on its way while a message is decided alone, so nothing needs holding
            # back behind it: the next message decided alone, or the next list, goes ahead.
            self.runner.release()
        return outcome

    @staticmethod
    def _internal_error(delivery: Delivery, exc: BaseException) -> Outcome:
        """The outcome of processing that raised: a retry for an internal error, logged."""
        log.error("processing delivery %d (message id %s) raised %s", delivery.tag,
                  delivery.message_id,
                  scrub("".join(traceback.format_exception(exc)).rstrip(), delivery))
        return Outcome(Kind.RETRY, Reason.INTERNAL_ERROR,
                       scrub(f"{type(exc).__name__}: {exc}", delivery))
