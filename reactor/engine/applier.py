"""One message on its own: read, authorise, compare-and-set, and the outcome that says so.

Every message the pipeline takes alone comes here: a list of one, a delete action (a barrier
in any list), and an event whose planned change missed or looked invalid from a remembered
state (``planner``), which only a fresh read of its job decides for certain. The outcome of
an event planned and committed with others is also built here (``outcome``), so an event reads
the same whichever way it went.

Expected failures become outcome values; anything else is a bug and propagates.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..contract import schemas
from ..contract.messages import DeleteMessage, EventMessage
from ..domain.errors import AuthError, InvalidTransition, StoreUnavailable, UnknownJob
from ..domain.outcomes import Kind, Outcome, OutcomeSignal, Reason, Reject, Retry
from ..domain.tokens import mask_text
from .statecache import StateCache

if TYPE_CHECKING:
    from .jobs import EventResult, Jobs

# The errors applying an event may raise that are outcomes, not bugs (see ``outcome``).
EXPECTED_ERRORS = (UnknownJob, AuthError, InvalidTransition, StoreUnavailable, TimeoutError)
# Besides InvalidTransition (whose outcome needs the job's state): shared by events and deletes.
_SIGNALLED = (UnknownJob, AuthError, StoreUnavailable, TimeoutError)
# Collection remembering applied delete actions, so a redelivered delete is a duplicate even
# though the job (and with it the history that normally holds the key) is gone.
DELETIONS = "deletions"
DELETE_EVENT = "delete"  # the ``event`` of a delete action's outcome


class Applier:
    """Applies one message on its own and says its outcome."""

    def __init__(self, jobs: "Jobs", states: StateCache):
        self.jobs = jobs
        self.states = states  # shared with the planner: one memory of what each job is in

    # --- events ------------------------------------------------------------------------------
    def event(self, message: EventMessage, key: str) -> Outcome:
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
            return self.outcome(message, key, exc, state)
        outcome = self.outcome(message, key, result)
        self.states.put(uuid, outcome.state)
        return outcome

    def outcome(self, message: EventMessage, key: str, result: "EventResult | BaseException",
                state: str | None = None) -> Outcome:
        """The outcome of an event: from its ``EventResult``, or from the expected error
        (``EXPECTED_ERRORS``) that applying it raised; ``state`` = the state it was seen in."""
        uuid, event = message.uuid, message.event
        if isinstance(result, InvalidTransition):
            state = self._state_now(uuid, state)
            return _signal(Reject(Reason.INVALID_TRANSITION, f"job {uuid}: {result.value}"),
                           message, key, state)
        if isinstance(result, _SIGNALLED):
            seen = None if isinstance(result, UnknownJob) else state
            return _signal(_signal_for(result), message, key, seen)
        if isinstance(result, BaseException):
            raise result  # not an outcome: a bug, or a store refusing for good
        after = result.record["state"]
        if result.applied:
            return Outcome(Kind.APPLIED, None, f"job {uuid}: {event} moved "
                           f"{result.from_state} → {after}", uuid, event, after, key)
        return Outcome(Kind.DUPLICATE, None, f"job {uuid}: this message ({_short_key(key)}) was "
                       "already applied; nothing changed", uuid, event, after, key)

    def _state_now(self, uuid: str, fallback: str | None) -> str | None:
        # The compare-and-set may have re-read the job before refusing; report the state it saw.
        try:
            record = self.jobs.store.get_job(uuid, with_history=False)
        except StoreUnavailable:
            return fallback
        return record["state"] if record else fallback

    # --- delete actions ----------------------------------------------------------------------
    def delete(self, message: DeleteMessage, key: str) -> Outcome:
        """Apply one delete action (they are rare, and they end a job's story): its outcome."""
        uuid = message.uuid
        store = self.jobs.store
        self.states.drop(uuid)
        try:
            done = store.get_document(DELETIONS, uuid)
            if done and done.get("key") == key and self.jobs.authority.is_admin(message.token):
                return Outcome(Kind.DUPLICATE, None, f"job {uuid}: this delete "
                               f"({_short_key(key)}) was already applied; nothing changed",
                               uuid, DELETE_EVENT, None, key)
            deleted = self.jobs.delete(uuid, message.token, force=message.force)
            if deleted:
                store.put_document(DELETIONS, {"uuid": uuid, "key": key, "force": message.force,
                                               "date": self.jobs.clock()})
        except _SIGNALLED as exc:
            return _signal(_signal_for(exc), message, key, None)
        if message.force:
            detail = f"job {uuid} deleted with every reference to it"
            state = None
        else:
            detail = f"job {uuid} hidden (soft delete)" if deleted else \
                f"job {uuid} was already hidden; nothing changed"
            state = self._hidden_state(uuid)
        return Outcome(Kind.APPLIED, None, detail, uuid, DELETE_EVENT, state, key)

    def _hidden_state(self, uuid: str) -> str | None:
        try:
            record = self.jobs.store.get_job(uuid, include_hidden=True, with_history=False)
        except StoreUnavailable:
            return None
        return record["state"] if record else None


def _signal(signal: OutcomeSignal, message: EventMessage | DeleteMessage, key: str,
            state: str | None) -> Outcome:
    event = getattr(message, "event", DELETE_EVENT)
    return Outcome(signal.kind, signal.reason, schemas.clip(signal.detail, 500),
                   message.uuid, event, state, key)


def _signal_for(exc: BaseException) -> OutcomeSignal:
    """The outcome signal of one of the ``_SIGNALLED`` errors."""
    if isinstance(exc, UnknownJob):
        return Reject(Reason.UNKNOWN_JOB, str(exc))
    if isinstance(exc, AuthError):
        return Reject(Reason.AUTH_FAILED, str(exc))
    reason = Reason.STORE_UNAVAILABLE if isinstance(exc, StoreUnavailable) else Reason.TIMEOUT
    return Retry(reason, mask_text(str(exc)) or type(exc).__name__)


def _short_key(key: str) -> str:
    return key if len(key) <= 24 else key[:23] + "…"
