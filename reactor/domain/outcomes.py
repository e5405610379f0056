"""Outcomes (contract §6): every message ends in exactly one of these values, and the consumer
settles it with exactly one action. This module is the one vocabulary for both.

``Kind``, ``Reason`` and ``ActionKind`` are ``StrEnum``: a member equals its string, formats as
it and serialises to it, so labels, JSON lines, headers and metric labels read exactly as the
plain strings always did. The reason tuples below are plain strings (YAML and CLI choices take
them as they are), derived from the members.

``Reject`` and ``Retry`` carry a reason and a masked detail: the message contract raises
``Reject`` (``MessageRejected``) for a message it refuses, and the pipeline builds both as
values on its way to an ``Outcome``, so entry points only ever see ``Outcome`` values.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum

from .tokens import mask_text


class Kind(StrEnum):
    """What happened to a message."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    RETRY = "retry"


class Reason(StrEnum):
    """Why a message was not applied (rejections, retries), or why it was dead-lettered."""

    TOO_LARGE = "too_large"
    DECODE_ERROR = "decode_error"
    SCHEMA_INVALID = "schema_invalid"
    UNKNOWN_EVENT = "unknown_event"
    UNKNOWN_JOB = "unknown_job"
    AUTH_FAILED = "auth_failed"
    INVALID_TRANSITION = "invalid_transition"
    STORE_UNAVAILABLE = "store_unavailable"
    TIMEOUT = "timeout"
    INTERNAL_ERROR = "internal_error"
    RETRIES_EXHAUSTED = "retries_exhausted"


class ActionKind(StrEnum):
    """What the consumer does with a delivery once its outcome is known."""

    ACK = "ack"
    RETRY_LATER = "retry_later"    # a copy through the delayed-retry queue
    DEAD_LETTER = "dead_letter"    # a copy to the dead-letter queue


def _values(*reasons: Reason) -> tuple[str, ...]:
    return tuple(r.value for r in reasons)


REJECT_REASONS = _values(Reason.TOO_LARGE, Reason.DECODE_ERROR, Reason.SCHEMA_INVALID,
                         Reason.UNKNOWN_EVENT, Reason.UNKNOWN_JOB, Reason.AUTH_FAILED,
                         Reason.INVALID_TRANSITION)
RETRY_REASONS = _values(Reason.STORE_UNAVAILABLE, Reason.TIMEOUT, Reason.INTERNAL_ERROR)
DEAD_LETTER_ONLY_REASONS = _values(Reason.RETRIES_EXHAUSTED)
DEAD_LETTER_REASONS = REJECT_REASONS + DEAD_LETTER_ONLY_REASONS  # every reason a dead letter has


class OutcomeSignal(Exception):
    """An outcome other than applied, with its reason and (masked) detail."""

    kind: Kind

    def __init__(self, reason: str, detail: str):
        # Masked here, where every rejection and retry is made: the detail reaches outcome
        # lines, logs, HTTP answers and dead-letter headers, and may quote the sender.
        detail = mask_text(detail)
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Reject(OutcomeSignal):
    """The message can never be applied as it is: dead-letter it."""

    kind = Kind.REJECTED


class Retry(OutcomeSignal):
    """The message could not be applied now for a transient reason: try again later."""

    kind = Kind.RETRY


@dataclass(frozen=True)
class Outcome:
    """The one recorded result of processing one message."""

    kind: Kind
    reason: str | None = None
    detail: str = ""
    job_uuid: str | None = None
    event: str | None = None
    state: str | None = None
    key: str | None = None

    @property
    def label(self) -> str:
        """``applied``, ``duplicate``, ``rejected:<reason>`` or ``retry:<reason>``."""
        return f"{self.kind}:{self.reason}" if self.reason else str(self.kind)

    @property
    def ok(self) -> bool:
        """True when the message's effect is committed (applied now or before)."""
        return self.kind in (Kind.APPLIED, Kind.DUPLICATE)

    @property
    def exit_code(self) -> int:
        """The ``reactor invoke`` exit code: 0 for applied/duplicate, 1 otherwise."""
        return 0 if self.ok else 1

    def to_dict(self) -> dict:
        """The outcome as a JSON-ready dict (with ``outcome`` = label)."""
        d = asdict(self)
        d["outcome"] = self.label
        if self.key:
            d["key"] = mask_text(self.key)  # "id:<message id>" quotes the sender
        return d

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class Action:
    """What to do with a delivery once its outcome is known."""

    kind: ActionKind
    reason: str | None = None
    detail: str = ""
