"""Group commit: the events of a list, for many jobs, planned together and committed in a few
store writes.

A message costs the store one commit on its own, and a durable commit costs an fsync or a round
trip however small the change. Here each event of a list is planned against the state its job
was last seen in, and the changes go to the store together (``JobStore.commit_waves``: one
SQLite transaction; on MongoDB one bulk write per wave), each still its own compare-and-set
carrying the duplicate key. So the guarantees are those of a message on its own:

- per job, events apply in delivery order: the list is cut into *waves*, wave k holding the
  k-th event of each job, planned from the state wave k-1 leads to; the waves go to the store
  in one write, wave after wave, and a job's change is not attempted once an earlier one of it
  missed;
- a change whose compare-and-set missed (another writer moved the job, a redelivered message,
  a job that is gone) and an event that looks invalid from a remembered state are left to be
  applied alone (``Planned.alone``), which re-reads the job and decides for certain;
- when the store fails, ``StoreDown`` ends the list: nothing more is decided.

With ``separate_commits`` the plans are the same but each change is committed on its own (the
pipeline process's one commit per message, planned with its code and data warm).

The remembered states (``StateCache``) are only guesses that save a read per message: the
compare-and-set checks every one, so a stale guess costs a fallback, never a wrong write.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from ..contract.messages import EventMessage
from ..domain.errors import (AuthError, InvalidTransition, ReactorError, StoreError,
                             StoreUnavailable, UnknownJob)
from ..domain.tokens import mask_text
from ..store.base import apply_in_waves
from .hold import Hold
from .statecache import StateCache

if TYPE_CHECKING:
    from .jobs import Change, EventResult, Jobs

log = logging.getLogger(__name__)


class StoreDown(Exception):
    """The store stopped answering while a list was being decided: decide nothing more."""


@dataclass(frozen=True)
class Planned:
    """What planning and committing did with one event: committed (``result``), refused before
    any write (``error``, seen in ``state``), or left to be applied alone (``alone``)."""

    result: "EventResult | None" = None
    error: ReactorError | None = None
    state: str | None = None
    alone: bool = False


ALONE = Planned(alone=True)


@dataclass
class _Plans:
    """The plans of one list so far: per job the state its next event starts from and how many
    changes it has, the jobs left to be applied alone, and the waves."""

    expected: dict[str, str | None]
    planned: dict[str, int]
    alone: set[str]
    waves: list[list[tuple[int, "Change"]]]


class Planner:
    """Plans the events of a list together and commits them in waves."""

    def __init__(self, jobs: "Jobs", states: StateCache, separate_commits: bool = False):
        self.jobs = jobs
        self.states = states  # shared with the applier: one memory of what each job is in
        self.separate_commits = separate_commits

    def run(self, events: Sequence[tuple[EventMessage, str]],
            hold: Hold) -> tuple[list[Planned | None], StoreDown | None]:
        """For each (message, key) in delivery order what became of it, None when its job is
        held back or its change was not committed; and ``StoreDown`` if the store failed (then
        nothing planned was committed by this call, and nothing more may be decided)."""
        verdicts: list[Planned | None] = [None] * len(events)
        plans = _Plans({}, {}, set(), [])
        date = self.jobs.clock()  # planned together, one time (one commit, or one list's)
        waves = plans.waves
        try:
            for index, (message, key) in enumerate(events):
                if not hold.holds(message.uuid):
                    verdicts[index] = self._plan(index, message, key, date, plans)
            committed = self._commit([[c for _, c in w] for w in waves])
        except StoreDown as down:
            return verdicts, down
        for wave, results in zip(waves, committed):
            for (index, change), result in zip(wave, results):
                if result is None:  # missed, or not tried after its job's earlier miss
                    self.states.drop(change.uuid)
                    verdicts[index] = ALONE
                else:
                    self.states.put(change.uuid, result.record["state"])
                    verdicts[index] = Planned(result=result)
        return verdicts, None

    def _plan(self, index: int, message: EventMessage, key: str, date: str,
              plans: _Plans) -> Planned | None:
        """Plan one event into ``plans``: None while its change waits for the commit."""
        uuid = message.uuid
        if uuid in plans.alone:
            return ALONE  # after its job's earlier event, in order
        try:
            if uuid not in plans.expected:
                plans.expected[uuid] = self._state(uuid)
            state = plans.expected[uuid]
            if state is None:
                return Planned(error=UnknownJob(f"no job with uuid {uuid}"))
            change = self.jobs.plan(uuid, message.event, message.data, message.token, key,
                                    state, date, private_data=True)
        except StoreDown:
            raise
        except AuthError as exc:
            if not plans.planned.get(uuid):
                return Planned(error=exc, state=state)
            plans.alone.add(uuid)  # the state it reports depends on a change in flight
            return ALONE
        except InvalidTransition:
            # The remembered state may be stale: decide for sure, and the job's later
            # events after it.
            plans.alone.add(uuid)
            return ALONE
        except Exception as exc:  # noqa: BLE001 - a bug: alone, it is decided or reported
            log.warning("planning an event of job %s raised %s; applying it alone", uuid,
                        type(exc).__name__)
            plans.alone.add(uuid)  # and its later events after it, so none overtakes it
            return ALONE
        wave = plans.planned.get(uuid, 0)
        plans.planned[uuid] = wave + 1
        if wave == len(plans.waves):
            plans.waves.append([])
        plans.waves[wave].append((index, change))
        plans.expected[uuid] = change.to_state
        return None

    def _state(self, uuid: str) -> str | None:
        """The job's state: remembered, else read (None when there is no such job)."""
        state = self.states.get(uuid)
        if state is not None:
            return state
        try:
            record = self.jobs.store.get_job(uuid, with_history=False)
        except (StoreUnavailable, TimeoutError) as exc:
            raise StoreDown() from exc
        if record is None:
            return None
        self.states.put(uuid, record["state"])
        return record["state"]

    def _commit(self, waves: list[list["Change"]]) -> list[list]:
        """``Jobs.commit_waves``; if the store refuses the list as a whole, every change is left
        to be applied alone, where each meets its own fate."""
        if not waves:
            return []
        if self.separate_commits:
            return self._commit_separately(waves)
        try:
            return self.jobs.commit_waves(waves, with_history=False)
        except (StoreUnavailable, TimeoutError) as exc:
            raise StoreDown() from exc
        except (StoreError, ValueError) as exc:
            log.warning("the store refused a batch of %d change(s) (%s); applying them one by "
                        "one", sum(map(len, waves)), mask_text(str(exc)))
            return [[None] * len(wave) for wave in waves]

    def _commit_separately(self, waves: list[list["Change"]]) -> list[list]:
        """Each change in a commit of its own, in the order of ``apply_in_waves`` (a job that
        missed is not tried again). If the store fails, what it committed keeps its result and
        the rest are None: applied alone, they are decided (or find the store down)."""
        failed: list[Exception] = []

        def commit(todo: list[tuple[str, "Change"]]) -> list:
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
