"""The dead-letter queue, read and re-driven (``reactor deadletters list|show|requeue``).

A dead letter is the original body plus the ``x-reactor-*`` headers the consumer wrote
(``reactor.consume.settle``; the names are in ``reactor.contract.headers``): reason, detail,
attempts, first seen, original routing key and message id. Here they become ``DeadLetter``
values; the broker work is ``reactor.broker.browse``.

Re-driving publishes a chosen message to the configured exchange with its original routing key
(the job uuid) and message id, with a publisher confirm, and only then removes it from the
dead-letter queue. The reactor's headers are dropped from the copy, so it starts again with a
fresh attempt count; ``x-reactor-redriven`` counts how often it was re-driven. A message that
was in fact applied meanwhile comes back as a harmless ``duplicate`` (same message id).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from ..contract import headers as _c
from ..domain.errors import ValidationError
from ..contract.messages import duplicate_key
from ..domain.outcomes import DEAD_LETTER_REASONS
from ..broker.publisher import routing_key
from ..domain.records import now_iso
from ..domain.tokens import SECRET_NAMES, body_token, mask, mask_text, scrub
from ..broker.browse import QueuedMessage, Redrive, RedriveResult, browse, redrive
from ..broker.topology import Topology

DEFAULT_LIMIT = 1000
REDRIVEN = _c.PREFIX + "redriven"        # how many times this message was re-driven
REDRIVEN_AT = _c.PREFIX + "redriven-at"  # when it was last re-driven
# Broker bookkeeping that describes the old life of the message, not the new one.
_DROPPED_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")


@dataclass(frozen=True)
class DeadLetter:
    """One message of the dead-letter queue, as an operator sees it (tokens masked)."""

    message_id: str          # the AMQP message id, else the digest the reactor keys it by
    reason: str
    attempts: int | None
    first_seen: str
    dead_lettered_at: str
    detail: str
    outcome: str
    routing_key: str
    position: int
    size: int
    body: str                # the body as text, its token masked
    headers: Mapping[str, Any]

    def to_dict(self, with_body: bool = True) -> dict:
        """A JSON-ready dict (``with_body=False`` leaves out body and headers)."""
        d = asdict(self)
        if not with_body:
            d.pop("body")
            d.pop("headers")
        return d


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def masked_body(body: bytes) -> str:
    """The body as text with its token (and any ``token=…`` text) masked."""
    return scrub(body.decode("utf-8", "replace"), [body_token(body)])


def _safe_headers(headers: Mapping[str, Any]) -> dict:
    out = {}
    for k, v in headers.items():
        if any(s in str(k).lower() for s in SECRET_NAMES):
            out[str(k)] = mask(_text(v))
        elif isinstance(v, (bytes, str)):
            out[str(k)] = mask_text(_text(v))
        elif isinstance(v, (int, float, bool)) or v is None:
            out[str(k)] = v
        else:
            out[str(k)] = mask_text(json.dumps(v, default=str))
    return out


def message_key(message: QueuedMessage) -> str:
    """The id a dead letter is chosen by: its message id, else the digest of its body."""
    mid = message.properties.get("message_id") or _text(message.headers.get(_c.MESSAGE_ID))
    return str(mid) if mid else duplicate_key(message.body)


def _routing_key(message: QueuedMessage) -> str:
    # The key it was first published with (the job uuid); else the uuid in its body.
    original = _text(message.headers.get(_c.ROUTING_KEY))
    if original:
        return original
    try:
        return routing_key(json.loads(message.body))
    except (ValueError, RecursionError):
        return ""


# A quorum queue dead-letters by itself a message delivered ``x-delivery-limit`` times (its
# consumers kept dying on it): no reactor headers then, only the broker's death record.
_BROKER_DEATH = "x-first-death-reason"


def _reason(headers: Mapping[str, Any]) -> str:
    """Why a dead letter is one: the consumer's reason, else the broker's delivery limit."""
    reason = _text(headers.get(_c.REASON))
    if reason:
        return reason
    return "retries_exhausted" if _text(headers.get(_BROKER_DEATH)) == "delivery_limit" \
        else "unknown"


def from_queued(message: QueuedMessage) -> DeadLetter:
    """The operator's view of one queued message."""
    h = message.headers
    attempts = h.get(_c.ATTEMPTS)
    return DeadLetter(
        message_id=mask_text(message_key(message)), reason=_reason(h),
        attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool)
        else None,
        first_seen=_text(h.get(_c.FIRST_SEEN)), dead_lettered_at=_text(h.get(_c.DEAD_LETTERED_AT)),
        detail=mask_text(_text(h.get(_c.DETAIL))), outcome=_text(h.get(_c.OUTCOME)),
        routing_key=mask_text(_routing_key(message)),
        position=message.position, size=len(message.body), body=masked_body(message.body),
        headers=_safe_headers(h))


def check_reason(reason: str | None) -> None:
    """ValidationError unless ``reason`` is None or a dead-letter reason."""
    if reason is not None and reason not in DEAD_LETTER_REASONS:
        raise ValidationError(f"unknown dead-letter reason {reason!r}; reasons: "
                              + ", ".join(DEAD_LETTER_REASONS))


def check_limit(limit: int) -> None:
    """ValidationError unless ``limit`` is a positive integer."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValidationError(f"limit must be a positive integer, got {limit!r}")


def list_dead_letters(url: str, topology: Topology, limit: int = DEFAULT_LIMIT,
                      reason: str | None = None) -> tuple[list[DeadLetter], int]:
    """Dead letters (oldest first, up to ``limit`` looked at, optionally one reason) and the
    queue's depth; every message stays where it is."""
    check_reason(reason)
    check_limit(limit)
    taken, depth = browse(url, topology.dead_letter_queue, limit)
    letters = [from_queued(m) for m in taken]
    return [d for d in letters if reason is None or d.reason == reason], depth


def show(url: str, topology: Topology, message_id: str,
         limit: int = DEFAULT_LIMIT) -> list[DeadLetter]:
    """Every dead letter with ``message_id`` (usually one); ValidationError if there is none."""
    check_limit(limit)
    taken, depth = browse(url, topology.dead_letter_queue, limit)
    found = [from_queued(m) for m in taken if message_key(m) == message_id]
    if not found:
        raise ValidationError(f"no dead letter with message id {message_id!r} in "
                              f"{topology.dead_letter_queue!r} ({len(taken)} of {depth} "
                              "message(s) looked at)")
    return found


def redrive_properties(message: QueuedMessage, now: str | None = None) -> dict:
    """Properties of the re-driven copy: the original ones, the reactor's headers dropped,
    the re-drive counted."""
    headers = message.headers
    count = headers.get(REDRIVEN)
    count = count if isinstance(count, int) and not isinstance(count, bool) else 0
    kept = {k: v for k, v in headers.items()
            if not str(k).startswith(_c.PREFIX) and not str(k).startswith(_DROPPED_HEADERS)}
    kept[REDRIVEN] = count + 1
    kept[REDRIVEN_AT] = now or now_iso()
    props = {k: v for k, v in message.properties.items() if k != "headers"}
    props["headers"] = kept
    props["delivery_mode"] = 2
    if not props.get("message_id"):
        # Keep the key the reactor used, so a re-driven copy of an applied message dedupes.
        props["message_id"] = message_key(message)
    return props


@dataclass
class RequeueReport:
    """Which dead letters were re-driven, which failed (and why), how many were looked at."""

    looked_at: int
    redriven: list[DeadLetter]
    failed: list[tuple[DeadLetter, str]]

    @property
    def ok(self) -> bool:
        return not self.failed


def requeue(url: str, topology: Topology, message_ids: Iterable[str] = (),
            reason: str | None = None, limit: int = DEFAULT_LIMIT) -> RequeueReport:
    """Re-drive the dead letters with the given message ids and/or ``reason`` to the exchange;
    everything else stays in the dead-letter queue untouched.

    An id that is not in the queue is an error and nothing is re-driven."""
    ids = list(dict.fromkeys(message_ids))
    check_reason(reason)
    check_limit(limit)
    if not ids and reason is None:
        raise ValidationError("choose what to requeue: one or more message ids, or --reason")
    letters: dict[int, DeadLetter] = {}

    def choose(taken: list[QueuedMessage]) -> list[Redrive]:
        keys = {m.position: message_key(m) for m in taken}
        missing = [i for i in ids if i not in keys.values()]
        if missing:
            raise ValidationError(
                f"not in {topology.dead_letter_queue!r} ({len(taken)} message(s) looked at): "
                + ", ".join(repr(i) for i in missing) + "; nothing was requeued")
        plan = []
        now = now_iso()
        for m in taken:
            letter = from_queued(m)
            if keys[m.position] in ids or (reason is not None and letter.reason == reason):
                letters[m.position] = letter
                # The routing key as it was, not the masked one the operator sees.
                plan.append(Redrive(m.position, topology.exchange, _routing_key(m),
                                    redrive_properties(m, now)))
        return plan

    result: RedriveResult = redrive(url, topology.dead_letter_queue, topology, limit, choose)
    return RequeueReport(result.looked_at, [letters[p] for p in result.redriven],
                         [(letters[p], why) for p, why in result.failed])
