"""Group commit: a batch of messages for many jobs, applied in a few store writes.

A message costs the store one commit on the one-by-one path (``Pipeline.process``), and a
durable commit costs an fsync or a round trip however small the change. Here a batch of
messages is parsed first (no I/O), each event is planned against the state its job was last
seen in, and the changes go to the store together (``JobStore.commit_waves``: one SQLite
transaction; on MongoDB one bulk write per wave), each still its own compare-and-set carrying
the duplicate key. So the guarantees are those of the one-by-one path:

- per job, events apply in delivery order: a batch is cut into *waves*, wave k holding the
  k-th event of each job, planned from the state wave k-1 leads to; the waves go to the store
  in one write (``JobStore.commit_waves``: one SQLite transaction), wave after wave, and a
  job's change is not attempted once an earlier one of it missed;
- a change whose compare-and-set missed (another writer moved the job, a redelivered message,
  a job that is gone) and an event that looks invalid from a remembered state go through
  ``Pipeline.apply``, the one-by-one path, which re-reads the job and decides for certain;
- delete actions are barriers: events before them commit first, they run one by one;
- when the store fails mid-batch, nothing more is decided: those messages come back as
  ``None`` for the caller to process one by one, in order, with its usual retries.

The remembered states (``StateCache``) are only guesses that save a read per message: the
compare-and-set checks every one, so a stale guess costs a fallback, never a wrong write.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

from ..domain.errors import AuthError, MachineError, StoreError, StoreUnavailable, UnknownJob
from .jobs import Change
from ..contract.messages import DeleteMessage, EventMessage
from ..domain.outcomes import Outcome
from ..store.base import apply_in_waves
from ..domain.tokens import mask_text

if TYPE_CHECKING:
    from .pipeline import Pipeline, Prepared

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One message of a batch, as ``Pipeline.process`` takes it."""

    body: bytes
    message_id: str | None = None
    params: Mapping[str, str] | None = None


class _StoreDown(Exception):
    """Raised inside a batch when the store stopped answering: decide nothing more."""


class GroupCommit:
    """Process batches of messages through one pipeline with group commit."""

    def __init__(self, pipeline: "Pipeline", separate_commits: bool = False):
        self.pipeline = pipeline
        self.separate_commits = separate_commits
        self.jobs = pipeline.jobs
        self.cache = pipeline.states  # one memory for the batch and the one-by-one path

    def process(self, items: Sequence[Item]) -> list[Outcome | None]:
        """One outcome per item, in order; None for each item the batch left undecided (the
        store failed, or applying it raised unexpectedly): process those one by one, in order.
        """
        prepared = self._prepare(items)
        outcomes: list[Outcome | None] = [p.outcome for p in prepared]
        outcomes += [None] * (len(items) - len(prepared))
        blocked: set[str] = set()  # jobs with an undecided message: their later ones wait too
        try:
            segment: list[int] = []
            for index, p in enumerate(prepared):
                if p.outcome is not None:
                    continue
                if isinstance(p.message, DeleteMessage):
                    self._run_segment(segment, prepared, outcomes, blocked)
                    segment = []
                    if p.message.uuid not in blocked:
                        outcomes[index] = self._delete(items[index], p.message.uuid)
                    if outcomes[index] is None:
                        blocked.add(p.message.uuid)
                else:
                    segment.append(index)
            self._run_segment(segment, prepared, outcomes, blocked)
        except _StoreDown as exc:
            undecided = sum(o is None for o in outcomes)
            log.warning("the store failed during a batch: %d message(s) left to the one-by-one "
                        "path: %s", undecided, mask_text(str(exc.__cause__ or exc)))
        return outcomes

    def _prepare(self, items: Sequence[Item]) -> list["Prepared"]:
        """``Pipeline.prepare`` of each item, up to (not including) one that raised."""
        prepared = []
        for item in items:
            try:
                prepared.append(self.pipeline.prepare(item.body, item.message_id, item.params))
            except Exception as exc:  # noqa: BLE001 - a bug; the one-by-one path reports it
                # Its job is unknown, so nothing after it may overtake it: stop here.
                log.warning("preparing a message raised %s; it and the %d message(s) after it "
                            "take the one-by-one path", type(exc).__name__,
                            len(items) - len(prepared) - 1)
                break
        return prepared

    def process_all(self, items: Sequence[Item]) -> list[Outcome]:
        """``process``, then the one-by-one pipeline for whatever the batch left undecided."""
        outcomes = self.process(items)
        return [o if o is not None else self.pipeline.process(i.body, i.message_id, i.params)
                for i, o in zip(items, outcomes)]

    # --- one segment (between delete actions) ---------------------------------------------
    def _run_segment(self, indexes: list[int], prepared: list["Prepared"],
                     outcomes: list[Outcome | None], blocked: set[str]) -> None:
        """Plan every event of the segment, each from the state its job's previous event leads
        to; commit them in one store write of waves; then the one-by-one path for the rest."""
        if not indexes:
            return
        date = self.jobs.clock()  # planned together, one time (one commit, or one list's)
        expected: dict[str, str | None] = {}  # per job: the state its next event starts from
        planned: dict[str, int] = {}  # per job: changes planned so far = its next wave
        held: set[str] = set()  # jobs with an event left to the one-by-one path
        waves: list[list[tuple[int, Change]]] = []
        fallback: list[int] = []
        for index in indexes:
            message, key = prepared[index].message, prepared[index].key
            uuid = message.uuid
            if uuid in blocked:
                continue  # an earlier message of this job is undecided: so is this one
            if uuid in held:
                fallback.append(index)  # after its job's earlier event, in order
                continue
            if uuid not in expected:
                expected[uuid] = self._state(uuid)
            state = expected[uuid]
            if state is None:
                outcomes[index] = self.pipeline.finish(message, key, UnknownJob(
                    f"no job with uuid {message.uuid}"))
                continue
            try:
                change = self.jobs.plan(uuid, message.event, message.data, message.token, key,
                                        state, date, private_data=True)
            except AuthError as exc:
                if planned.get(uuid):  # the state it reports depends on a change in flight
                    held.add(uuid)
                    fallback.append(index)
                else:
                    outcomes[index] = self.pipeline.finish(message, key, exc, state)
            except MachineError:
                # The remembered state may be stale: decide for sure, and the job's later
                # events after it.
                held.add(uuid)
                fallback.append(index)
            else:
                wave = planned.get(uuid, 0)
                planned[uuid] = wave + 1
                if wave == len(waves):
                    waves.append([])
                waves[wave].append((index, change))
                expected[uuid] = change.to_state
        for wave, results in zip(waves, self._commit([[c for _, c in w] for w in waves])):
            for (index, change), result in zip(wave, results):
                message, key = prepared[index].message, prepared[index].key
                if result is None:  # missed, or not tried after its job's earlier miss
                    self.cache.drop(message.uuid)
                    fallback.append(index)
                else:
                    self.cache.put(message.uuid, result.record["state"])
                    outcomes[index] = self.pipeline.finish(message, key, result)
        for index in sorted(fallback):
            message, key = prepared[index].message, prepared[index].key
            if message.uuid in blocked:
                continue
            outcome = self._apply_alone(message, key)
            outcomes[index] = outcome
            if outcome is None:
                blocked.add(message.uuid)

    def _state(self, uuid: str) -> str | None:
        """The job's state: remembered, else read (None when there is no such job)."""
        state = self.cache.get(uuid)
        if state is not None:
            return state
        try:
            record = self.jobs.store.get_job(uuid, with_history=False)
        except (StoreUnavailable, TimeoutError) as exc:
            raise _StoreDown() from exc
        if record is None:
            return None
        self.cache.put(uuid, record["state"])
        return record["state"]

    def _commit(self, waves: list[list[Change]]) -> list[list]:
        """``Jobs.commit_waves``; if the store refuses the batch as a whole, every change falls
        back to the one-by-one path, where each meets its own fate alone."""
        if not waves:
            return []
        if self.separate_commits:
            return self._commit_separately(waves)
        try:
            return self.jobs.commit_waves(waves, with_history=False)
        except (StoreUnavailable, TimeoutError) as exc:
            raise _StoreDown() from exc
        except (StoreError, ValueError) as exc:
            log.warning("the store refused a batch of %d change(s) (%s); applying them one by "
                        "one", sum(map(len, waves)), mask_text(str(exc)))
            return [[None] * len(wave) for wave in waves]

    def _commit_separately(self, waves: list[list[Change]]) -> list[list]:
        """Each change in a commit of its own, in the order of ``apply_in_waves`` (a job that
        missed is not tried again). If the store fails, what it committed keeps its result and
        the rest are None: the one-by-one path then decides them (or finds the store down)."""
        failed: list[Exception] = []

        def commit(todo: list[tuple[str, Change]]) -> list:
            results = []
            for _uuid, change in todo:
                if not failed:
                    try:
                        results.append(self.jobs.commit(change))
                        continue
                    except (StoreUnavailable, TimeoutError, StoreError) as exc:
                        failed.append(exc)
                        log.warning("the store failed while committing changes one by one "
                                    "(%s); the rest take the one-by-one path",
                                    mask_text(str(exc)))
                results.append(None)
            return results

        return apply_in_waves([[(c.uuid, c) for c in wave] for wave in waves], commit)

    def _apply_alone(self, message: EventMessage, key: str) -> Outcome | None:
        """The one-by-one path for one event; None if it could not be decided."""
        try:
            outcome = self.pipeline.apply(message, key)
        except Exception as exc:  # noqa: BLE001 - the caller retries it alone and counts it
            log.warning("applying an event to job %s raised %s; leaving it to the one-by-one "
                        "path", message.uuid, type(exc).__name__)
            return None
        if outcome.kind == "retry":
            raise _StoreDown(outcome.detail)
        return outcome

    def _delete(self, item: Item, uuid: str) -> Outcome | None:
        """A delete action, alone (they are rare, and they end a job's story)."""
        self.cache.drop(uuid)
        try:
            outcome = self.pipeline.process(item.body, item.message_id, item.params)
        except Exception as exc:  # noqa: BLE001 - decided again by the one-by-one path
            log.warning("a delete action for job %s raised %s; leaving it to the one-by-one "
                        "path", uuid, type(exc).__name__)
            return None
        if outcome.kind == "retry":
            raise _StoreDown(outcome.detail)
        return outcome
