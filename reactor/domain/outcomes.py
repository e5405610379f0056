"""Outcomes (SPEC §6): every message ends in exactly one of these values.

Inside the pipeline the outcome is raised as an exception (``Reject``/``Retry``) and turned into
an ``Outcome`` value at the edge, so entry points only ever see values.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .tokens import mask_text

APPLIED = "applied"
DUPLICATE = "duplicate"
REJECTED = "rejected"
RETRY = "retry"

REJECT_REASONS = ("too_large", "decode_error", "schema_invalid", "unknown_event", "unknown_job",
                  "auth_failed", "invalid_transition")
RETRY_REASONS = ("store_unavailable", "timeout", "internal_error")
DEAD_LETTER_ONLY_REASONS = ("retries_exhausted",)
DEAD_LETTER_REASONS = REJECT_REASONS + DEAD_LETTER_ONLY_REASONS  # every reason a dead letter has


class OutcomeSignal(Exception):
    """Raised inside the pipeline to end a message with an outcome other than applied."""

    kind = ""

    def __init__(self, reason: str, detail: str):
        # Masked here, where every rejection and retry is made: the detail reaches outcome
        # lines, logs, HTTP answers and dead-letter headers, and may quote the sender.
        detail = mask_text(detail)
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Reject(OutcomeSignal):
    """The message can never be applied as it is: dead-letter it."""

    kind = REJECTED


class Retry(OutcomeSignal):
    """The message could not be applied now for a transient reason: try again later."""

    kind = RETRY


@dataclass(frozen=True)
class Outcome:
    """The one recorded result of processing one message."""

    kind: str
    reason: str | None = None
    detail: str = ""
    job_uuid: str | None = None
    event: str | None = None
    state: str | None = None
    key: str | None = None

    @property
    def label(self) -> str:
        """``applied``, ``duplicate``, ``rejected:<reason>`` or ``retry:<reason>``."""
        return f"{self.kind}:{self.reason}" if self.reason else self.kind

    @property
    def ok(self) -> bool:
        """True when the message's effect is committed (applied now or before)."""
        return self.kind in (APPLIED, DUPLICATE)

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
