"""The one processing pipeline every entry point shares (queue consumer, invoke, replay, demo).

``Pipeline.process`` turns one message into exactly one ``Outcome``: the message contract
(``reactor.contract.messages``) decides what the message means, ``Jobs`` applies it with one atomic
compare-and-set that also carries the duplicate key. Expected failures become outcome values;
anything else is a bug and propagates, so the caller can count the attempt.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from ..contract import messages
from ..contract import schemas
from ..domain.errors import AuthError, MachineError, StoreUnavailable, UnknownJob
from ..contract.messages import DeleteMessage, EventMessage, Message
from ..domain.outcomes import APPLIED, DUPLICATE, REJECTED, Outcome, OutcomeSignal, Reject, Retry
from .statecache import DEFAULT_CACHE_SIZE, StateCache
from ..domain.tokens import mask_text

if TYPE_CHECKING:
    from ..app import App
    from .jobs import EventResult, Jobs

log = logging.getLogger(__name__)

# Errors that applying an event may raise and that are outcomes, not bugs (see ``finish``).
EXPECTED_ERRORS = (UnknownJob, AuthError, MachineError, StoreUnavailable, TimeoutError)

DEFAULT_MAX_BYTES = 262144
# Collection remembering applied delete actions, so a redelivered delete is a duplicate even
# though the job (and with it the history that normally holds the key) is gone.
DELETIONS = "deletions"


@dataclass(frozen=True)
class Prepared:
    """A message after the steps that need no store: parsed (``message``), or already ended
    (``outcome``, a rejection); ``key`` is its duplicate key either way."""

    key: str
    message: Message | None
    outcome: Outcome | None = None


class Pipeline:
    """Size → decode → classify → validate → normalise → authorise → commit → outcome."""

    def __init__(self, jobs: "Jobs", max_bytes: int = DEFAULT_MAX_BYTES,
                 cache_size: int = DEFAULT_CACHE_SIZE):
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        self.jobs = jobs
        self.max_bytes = max_bytes
        # The state each job was last seen in: an event starts from it instead of a read.
        self.states = StateCache(cache_size)
        # Compile every schema now, so a broken schema is a start-up error and no message pays
        # for compiling; the ``jsonschema`` copies (error descriptions) compile when first needed.
        schemas.fast_validators()

    @classmethod
    def from_app(cls, app: "App") -> "Pipeline":
        """The pipeline over an App's jobs, with its configured size limit."""
        return cls(app.jobs, app.settings.max_message_bytes)

    def process(self, body: bytes, message_id: str | None = None,
                params: Mapping[str, str] | None = None) -> Outcome:
        """Process one message (bytes; text is encoded as UTF-8) into its one outcome.

        Unexpected exceptions (bugs, a store refusing a write for good) propagate, so that the
        caller counts the attempt."""
        prepared = self.prepare(body, message_id, params)
        if prepared.outcome is not None:
            outcome = prepared.outcome
        elif isinstance(prepared.message, DeleteMessage):
            outcome = self._delete(prepared.message, prepared.key)
        else:
            outcome = self.apply(prepared.message, prepared.key)
        log.debug("outcome %s for job %s (%s)", outcome.label, outcome.job_uuid, outcome.detail)
        return outcome

    def prepare(self, body: bytes, message_id: str | None = None,
                params: Mapping[str, str] | None = None) -> Prepared:
        """The steps before the store (size, decode, classify, validate): message and key, or
        the rejection that already ends it."""
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogateescape")
        key = messages.duplicate_key(body, message_id, params)
        try:
            message = messages.parse(body, params, self.max_bytes)
        except messages.MessageRejected as signal:
            return Prepared(key, None, Outcome(REJECTED, signal.reason, signal.detail,
                                               signal.job_uuid, signal.event, None, key))
        return Prepared(key, message)

    # --- events ------------------------------------------------------------------------------
    def apply(self, message: EventMessage, key: str) -> Outcome:
        """Apply one event message on its own (read, authorise, compare-and-set): its outcome."""
        uuid, event = message.uuid, message.event
        state = self.states.get(uuid)
        try:
            if state is None:
                # Only the state is needed to decide, and the compare-and-set carries the
                # duplicate key: reading the history (it grows with every event) would be
                # wasted work.
                record = self.jobs.get(uuid, with_history=False)
                state = record["state"]
            else:
                # A remembered state is a guess the compare-and-set checks: if the job moved
                # meanwhile (another writer, a redelivery), it misses and the job is re-read.
                record = {"state": state}
            # The message was decoded here, so its data is ours: no copy for the history entry.
            result = self.jobs.apply(uuid, event, message.data, token=message.token, key=key,
                                     record=record, with_history=False, private_data=True)
        except EXPECTED_ERRORS as exc:
            self.states.drop(uuid)
            return self.finish(message, key, exc, state)
        outcome = self.finish(message, key, result)
        self.states.put(uuid, outcome.state)
        return outcome

    def finish(self, message: EventMessage, key: str, result: "EventResult | BaseException",
               state: str | None = None) -> Outcome:
        """The outcome of an event: from its ``EventResult``, or from the expected error
        (``EXPECTED_ERRORS``) that applying it raised; ``state`` = the state it was seen in."""
        uuid, event = message.uuid, message.event
        if isinstance(result, MachineError):
            state = self._state_now(uuid, state)
            detail = f"job {uuid}: {result.value}"
            return self._signal(Reject("invalid_transition", detail), message, key, state)
        if isinstance(result, _SIGNALLED):
            seen = None if isinstance(result, UnknownJob) else state
            return self._signal(_signal_for(result), message, key, seen)
        if isinstance(result, BaseException):
            raise result  # not an outcome: a bug, or a store refusing for good
        after = result.record["state"]
        if result.applied:
            return Outcome(APPLIED, None, f"job {uuid}: {event} moved {result.from_state} → "
                           f"{after}", uuid, event, after, key)
        return Outcome(DUPLICATE, None, f"job {uuid}: this message ({_short_key(key)}) was "
                       "already applied; nothing changed", uuid, event, after, key)

    def _state_now(self, uuid: str, fallback: str | None) -> str | None:
        # The compare-and-set may have re-read the job before refusing; report the state it saw.
        try:
            record = self.jobs.store.get_job(uuid, with_history=False)
        except StoreUnavailable:
            return fallback
        return record["state"] if record else fallback

    # --- delete actions ----------------------------------------------------------------------
    def _delete(self, message: DeleteMessage, key: str) -> Outcome:
        uuid = message.uuid
        store = self.jobs.store
        self.states.drop(uuid)
        try:
            done = store.get_document(DELETIONS, uuid)
            if done and done.get("key") == key and self.jobs.authority.is_admin(message.token):
                return Outcome(DUPLICATE, None, f"job {uuid}: this delete ({_short_key(key)}) "
                               "was already applied; nothing changed", uuid, "delete", None, key)
            deleted = self.jobs.delete(uuid, message.token, force=message.force)
            if deleted:
                store.put_document(DELETIONS, {"uuid": uuid, "key": key, "force": message.force,
                                               "date": self.jobs.clock()})
        except _SIGNALLED as exc:
            return self._signal(_signal_for(exc), message, key, None)
        if message.force:
            detail = f"job {uuid} deleted with every reference to it"
            state = None
        else:
            detail = f"job {uuid} hidden (soft delete)" if deleted else \
                f"job {uuid} was already hidden; nothing changed"
            state = self._hidden_state(uuid)
        return Outcome(APPLIED, None, detail, uuid, "delete", state, key)

    def _hidden_state(self, uuid: str) -> str | None:
        try:
            record = self.jobs.store.get_job(uuid, include_hidden=True, with_history=False)
        except StoreUnavailable:
            return None
        return record["state"] if record else None

    @staticmethod
    def _signal(signal: OutcomeSignal, message: EventMessage | DeleteMessage, key: str,
                state: str | None) -> Outcome:
        event = getattr(message, "event", "delete")
        return Outcome(signal.kind, signal.reason, schemas.clip(signal.detail, 500),
                       message.uuid, event, state, key)


def _retry(reason: str, exc: BaseException) -> OutcomeSignal:
    return Retry(reason, mask_text(str(exc)) or type(exc).__name__)


# The expected errors (besides MachineError, which needs the job's state) and their outcomes,
# shared by events and delete actions.
_SIGNALLED = (UnknownJob, AuthError, StoreUnavailable, TimeoutError)


def _signal_for(exc: BaseException) -> OutcomeSignal:
    """The outcome signal of one of the ``_SIGNALLED`` errors."""
    if isinstance(exc, UnknownJob):
        return Reject("unknown_job", str(exc))
    if isinstance(exc, AuthError):
        return Reject("auth_failed", str(exc))
    return _retry("store_unavailable" if isinstance(exc, StoreUnavailable) else "timeout", exc)


def _short_key(key: str) -> str:
    return key if len(key) <= 24 else key[:23] + "…"

