"""Settling a delivery once its outcome is known: what to do (``decide``), and doing it.

- ``applied`` / ``duplicate`` → ack;
- ``rejected:<reason>`` → a copy to the dead-letter queue with reason, detail, attempts,
  first-seen time and the original routing key and message id as headers, confirmed by the
  broker, then ack; ``invalid_transition`` first goes through the delayed-retry queue
  ``transition_retries`` times (it may be an out-of-order arrival);
- ``retry:<reason>`` (once the worker's quick retries and outage riding are done) → the
  delayed-retry queue until ``max_attempts``, then the dead-letter queue as
  ``retries_exhausted``.

Attempts travel in the ``x-reactor-attempts`` header of the copies (``contract.headers``), so a
poison message ends in the dead-letter queue instead of looping. Tokens never reach headers.

Acks of committed deliveries are held while more deliveries wait and go out together, with
their bookkeeping (``AckHold``); a copy is acked by the connection on its own confirm.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from ..broker.base import ConsumingConnection, Delivery
from ..contract import headers as h
from ..domain import tokens
from ..domain.outcomes import Action, ActionKind, Kind, Outcome, Reason
from ..domain.records import now_iso
from ..domain.tokens import SECRET_NAMES, body_token, mask_text

# The longest an ack of a committed delivery is held back to go out with later ones.
ACK_HOLD_S = 0.01

Book = Callable[[], None]  # the bookkeeping of one settled delivery, run after its ack


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


class Routes(Protocol):
    """Where copies go: what settling needs of the topology."""

    dead_letter_queue: str
    retry_delay_ms: int
    main_queues: list[str]

    def retry_queue_for(self, queue: str) -> str:
        """The delayed-retry queue of main queue ``queue``."""


def attempt_number(delivery: Delivery) -> int:
    """Which delivery of this message this is: 1 + failed attempts recorded so far."""
    headers = delivery.headers
    # Quorum queues count redeliveries (crashes, nacks) themselves; count those too.
    return 1 + _count(headers.get(h.ATTEMPTS)) + _count(headers.get(h.BROKER_COUNT))


def _count(value: Any) -> int:
    # A sender controls these headers; anything but a small non-negative int counts as 0.
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(value, 0), 1_000_000)


def undecided(outcome: Outcome | None) -> bool:
    """True for what the worker decides on its own before settling: no outcome, or a retry."""
    return outcome is None or outcome.kind == Kind.RETRY


def decide(outcome: Outcome, attempt: int, limits: Limits) -> Action:
    """The action for ``outcome`` on delivery number ``attempt`` of a message."""
    if outcome.ok:
        return Action(ActionKind.ACK)
    if outcome.kind == Kind.REJECTED:
        if outcome.reason == Reason.INVALID_TRANSITION and attempt <= limits.transition_retries:
            return Action(ActionKind.RETRY_LATER, outcome.reason, outcome.detail)
        return Action(ActionKind.DEAD_LETTER, outcome.reason, outcome.detail)
    if attempt < limits.max_attempts:
        return Action(ActionKind.RETRY_LATER, outcome.reason, outcome.detail)
    return Action(ActionKind.DEAD_LETTER, Reason.RETRIES_EXHAUSTED,
                  f"{attempt} attempts failed; last: {outcome.label}: {outcome.detail}")


def forwarded_properties(delivery: Delivery, action: Action, attempt: int, outcome_label: str,
                         now: str | None = None) -> dict:
    """Properties of the copy of ``delivery`` that ``action`` sends on (body unchanged)."""
    now = now or now_iso()
    # A header named like a secret is never copied onward.
    headers = {k: v for k, v in delivery.headers.items() if k != h.BROKER_COUNT
               and not any(s in str(k).lower() for s in SECRET_NAMES)}
    # Where it came from is kept from the first delivery: later ones arrive via the retry queue.
    headers.setdefault(h.FIRST_SEEN, now)
    # Copies for the operator (the properties keep the originals): masked like every
    # dead-letter record, in case a sender put a token there.
    headers.setdefault(h.ROUTING_KEY, mask_text(delivery.routing_key))
    headers.setdefault(h.EXCHANGE, delivery.exchange)
    headers[h.ATTEMPTS] = attempt
    headers[h.QUEUE] = delivery.queue
    detail = scrub(action.detail or "", delivery)[:h.DETAIL_CHARS]
    if action.kind == ActionKind.RETRY_LATER:
        headers[h.RETRY_REASON] = action.reason
    else:
        headers.update({h.REASON: action.reason, h.DETAIL: detail, h.OUTCOME: outcome_label,
                        h.MESSAGE_ID: mask_text(delivery.message_id or ""),
                        h.DEAD_LETTERED_AT: now})
    props = {k: v for k, v in delivery.properties.items() if k != "headers"}
    props["headers"] = headers
    props["delivery_mode"] = 2
    return props


def scrub(text: str, delivery: Delivery) -> str:
    """``text`` with token-like values and the message's own token masked (for headers, logs)."""
    return tokens.scrub(text, [body_token(delivery.body)])


class AckHold:
    """The ack-holding policy: acks of committed deliveries are held back while more deliveries
    wait, and sent together once ``every`` are held, the worker runs out of work, or the first
    held one would otherwise wait ``hold_s``.

    One ack per delivery cost a wake-up of the IO loop and a round trip to the broker each (a
    large share of the CPU of one-commit-per-message consuming), while slow commits gain
    nothing from holding. A crash meanwhile only means redeliveries, which the duplicate keys make
    no-ops. Each held ack's bookkeeping (``Book``) runs on the IO thread once it went out.
    """

    def __init__(self, connection: ConsumingConnection, every: int, hold_s: float,
                 run_books: Callable[[list[Book]], None]):
        self.connection = connection
        self.every = every
        self.hold_s = hold_s
        self._run_books = run_books
        self._books: list[Book] = []  # one per held ack
        self._since = 0.0

    def hold(self, deliveries: list[Delivery], books: list[Book]) -> None:
        """Hand ``deliveries`` to the connection to ack later, their ``books`` to run after."""
        self.connection.ack_many(deliveries, now=False)
        if not self._books:
            self._since = time.perf_counter()
        self._books += books

    def after_turn(self, last_turn_s: float, waiting: bool) -> None:
        """Send the held acks unless more deliveries wait and holding them through another
        turn as long as the last one keeps them within ``every`` and ``hold_s``."""
        if self._books and (len(self._books) >= self.every or not waiting or
                            time.perf_counter() - self._since + last_turn_s >= self.hold_s):
            self.send()

    def send(self) -> None:
        """Send the held acks now; then, on the IO thread, their bookkeeping in one go."""
        if not self._books:
            return
        books, self._books = self._books, []
        self.connection.send_acks(after=lambda: self._run_books(books))


class Settler:
    """Carries out each delivery's action: acks held together, copies forwarded to the
    delayed-retry or dead-letter queue; each with its bookkeeping (``consume.books.Books``)."""

    def __init__(self, connection: ConsumingConnection, routes: Routes, limits: Limits,
                 books: Any, acks: AckHold):
        self.connection = connection
        self.routes = routes
        self.limits = limits
        self.books = books
        self.acks = acks

    def settle_decided(self, deliveries: Sequence[Delivery],
                       outcomes: Sequence[Outcome | None], taken_at: float) -> None:
        """Settle the deliveries whose outcome is decided (``undecided`` ones are skipped):
        acks held together, copies each on its own."""
        acks, books = [], []
        for delivery, outcome in zip(deliveries, outcomes):
            if undecided(outcome):
                continue
            attempt = attempt_number(delivery)
            action = decide(outcome, attempt, self.limits)
            if action.kind == ActionKind.ACK:
                books.append(self.books.acked(delivery, outcome, attempt, taken_at))
                acks.append(delivery)
            else:  # a copy to the retry or dead-letter queue, acked on its own confirm
                self._forward(delivery, action, attempt, outcome, taken_at)
        if acks:
            self.acks.hold(acks, books)

    def settle(self, delivery: Delivery, outcome: Outcome, attempt: int,
               taken_at: float) -> None:
        """Settle one delivery by its final outcome (a retry included)."""
        action = decide(outcome, attempt, self.limits)
        if action.kind == ActionKind.ACK:
            self.acks.hold([delivery], [self.books.acked(delivery, outcome, attempt, taken_at)])
        else:
            self._forward(delivery, action, attempt, outcome, taken_at)

    def _forward(self, delivery: Delivery, action: Action, attempt: int, outcome: Outcome,
                 taken_at: float) -> None:
        props = forwarded_properties(delivery, action, attempt, outcome.label)
        if action.kind == ActionKind.RETRY_LATER:
            target = self.routes.retry_queue_for(delivery.queue)
        else:
            target = self.routes.dead_letter_queue
        self.books.forwarded(delivery, outcome, action, attempt, taken_at,
                             self.routes.retry_delay_ms)
        self.connection.forward(delivery, target, delivery.body, props)
