"""The one processing pipeline every entry point shares (queue consumer, invoke, replay, demo).

``Pipeline.process`` takes a list of messages (a single message is a list of one) and gives one
``Outcome`` per message: the message contract (``reactor.contract.messages``) decides what each
means, and ``Jobs`` applies it with one atomic compare-and-set that also carries the duplicate
key. Expected failures become outcome values.

- A list of one is applied on its own (``applier``). Anything unexpected propagates, so the
  caller can count the attempt.
- A longer list is parsed first (no I/O), its events are planned together and committed in
  waves (``planner``: group commit), and delete actions are barriers applied on their own. An
  unexpected failure is contained to its message: the list leaves that message undecided
  (``None``), and with it every later message of its job (``hold``); when the store fails,
  nothing more is decided. The caller decides those one by one, in order.
"""
from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

from ..contract import messages
from ..contract import schemas
from ..contract.messages import DeleteMessage, Message
from ..domain.outcomes import Kind, Outcome
from ..domain.tokens import mask_text
from .applier import Applier
from .hold import Hold
from .planner import Planner, StoreDown
from .statecache import DEFAULT_CACHE_SIZE, StateCache

if TYPE_CHECKING:
    from .jobs import Jobs

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 262144


@dataclass(frozen=True)
class Item:
    """One message as the pipeline takes it: its bytes (text is encoded as UTF-8), the message
    id it came with, and the parameters of a callback or an invocation."""

    body: bytes
    message_id: str | None = None
    params: Mapping[str, str] | None = None


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
                 cache_size: int = DEFAULT_CACHE_SIZE, separate_commits: bool = False):
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        self.jobs = jobs
        self.max_bytes = max_bytes
        # The state each job was last seen in: an event starts from it instead of a read.
        self.states = StateCache(cache_size)
        self.applier = Applier(jobs, self.states)
        # ``separate_commits``: a list's events are planned together but committed one by one.
        self.planner = Planner(jobs, self.states, separate_commits)
        # Compile every schema now, so a broken schema is a start-up error and no message pays
        # for compiling; the ``jsonschema`` copies (error descriptions) compile when first needed.
        schemas.fast_validators()

    def process(self, items: Sequence[Item], hold: Hold | None = None) -> list[Outcome | None]:
        """One outcome per item, in order; None for an item left undecided or held back.

        ``hold`` names the jobs whose messages must wait (they come back None), and gains the
        jobs this list leaves undecided; a list of one raises what processing it raised."""
        hold = Hold() if hold is None else hold
        if len(items) == 1:
            outcomes = [self._one(items[0], hold)]
        else:
            outcomes = self._many(items, hold)
        if log.isEnabledFor(logging.DEBUG):
            for outcome in outcomes:
                if outcome is not None:
                    log.debug("outcome %s for job %s (%s)", outcome.label, outcome.job_uuid,
                              outcome.detail)
        return outcomes

    # --- a list of one ------------------------------------------------------------------------
    def _one(self, item: Item, hold: Hold) -> Outcome | None:
        uuid = None
        try:
            prepared = self.prepare(item.body, item.message_id, item.params)
            if prepared.outcome is not None:
                return prepared.outcome
            uuid = prepared.message.uuid
            if hold.holds(uuid):
                return None
            outcome = self._alone(prepared)
        except BaseException:
            hold.add(uuid)  # what the caller sends next must not overtake this message
            raise
        if outcome.kind == Kind.RETRY:
            hold.add(uuid)
        return outcome

    def _alone(self, prepared: Prepared) -> Outcome:
        if isinstance(prepared.message, DeleteMessage):
            return self.applier.delete(prepared.message, prepared.key)
        return self.applier.event(prepared.message, prepared.key)

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
            return Prepared(key, None, Outcome(Kind.REJECTED, signal.reason, signal.detail,
                                               signal.job_uuid, signal.event, None, key))
        return Prepared(key, message)

    # --- a longer list ------------------------------------------------------------------------
    def _many(self, items: Sequence[Item], hold: Hold) -> list[Outcome | None]:
        prepared = self._prepare_all(items)
        outcomes: list[Outcome | None] = [p.outcome for p in prepared]
        outcomes += [None] * (len(items) - len(prepared))
        try:
            segment: list[int] = []
            for index, p in enumerate(prepared):
                if p.outcome is not None:
                    continue  # refused by the contract: it changes no job, so it waits for none
                if isinstance(p.message, DeleteMessage):
                    self._segment(segment, prepared, outcomes, hold)
                    segment = []
                    outcomes[index] = self._alone_in_list(p, hold)
                else:
                    segment.append(index)
            self._segment(segment, prepared, outcomes, hold)
        except StoreDown as exc:
            log.warning("the store failed during a batch: %d message(s) left to the one-by-one "
                        "path: %s", outcomes.count(None), mask_text(str(exc.__cause__ or exc)))
        except Exception as exc:  # noqa: BLE001 - a bug outside any one message
            log.error("group commit of %d messages raised %s; leaving the undecided ones to the "
                      "one-by-one path", len(items),
                      mask_text("".join(traceback.format_exception(exc))))
            hold.add(None)
        for p, outcome in zip(prepared, outcomes):
            if outcome is None:
                hold.add(p.message.uuid)
        if len(prepared) < len(items):
            hold.add(None)  # a message whose job is unknown: everything after it waits
        return outcomes

    def _prepare_all(self, items: Sequence[Item]) -> list[Prepared]:
        """``prepare`` of each item, up to (not including) one that raised."""
        prepared = []
        for item in items:
            try:
                prepared.append(self.prepare(item.body, item.message_id, item.params))
            except Exception as exc:  # noqa: BLE001 - a bug; deciding it alone reports it
                # Its job is unknown, so nothing after it may overtake it: stop here.
                log.warning("preparing a message raised %s; it and the %d message(s) after it "
                            "take the one-by-one path", type(exc).__name__,
                            len(items) - len(prepared) - 1)
                break
        return prepared

    def _segment(self, indexes: list[int], prepared: list[Prepared],
                 outcomes: list[Outcome | None], hold: Hold) -> None:
        """The events between two delete actions: planned and committed together, then those
        left to be applied alone, in delivery order."""
        if not indexes:
            return
        events = [(prepared[i].message, prepared[i].key) for i in indexes]
        verdicts, down = self.planner.run(events, hold)
        for index, (message, key), verdict in zip(indexes, events, verdicts):
            if verdict is not None and not verdict.alone:
                outcomes[index] = self.applier.outcome(message, key,
                                                       verdict.result or verdict.error,
                                                       verdict.state)
        if down is not None:
            raise down
        for index, verdict in zip(indexes, verdicts):
            if verdict is not None and verdict.alone:
                outcomes[index] = self._alone_in_list(prepared[index], hold)

    def _alone_in_list(self, prepared: Prepared, hold: Hold) -> Outcome | None:
        """One message of a longer list on its own; None if it could not be decided (and its
        job then waits). A retry means the store fails: ``StoreDown``."""
        uuid = prepared.message.uuid
        if hold.holds(uuid):
            return None
        try:
            outcome = self._alone(prepared)
        except Exception as exc:  # noqa: BLE001 - the caller retries it alone and counts it
            log.warning("applying a message to job %s raised %s; leaving it to the one-by-one "
                        "path", uuid, type(exc).__name__)
            hold.add(uuid)
            return None
        if outcome.kind == Kind.RETRY:
            hold.add(uuid)
            raise StoreDown(outcome.detail)
        return outcome
