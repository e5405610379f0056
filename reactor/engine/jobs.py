"""Job operations shared by every entry point: create, apply an event, delete.

The library, the pipeline (queue, invoke, callbacks) and the CLI all go through these functions,
so the same rules hold whichever path an event takes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import archive
from ..domain import lifecycle
from ..domain import records
from ..domain.errors import AuthError, InvalidTransition, StoreError, UnknownJob, UnknownPipeline
from ..domain.identifiers import check_any_typed, check_typed, job_uuid
from ..domain.jsonvalues import check_json, check_text
from ..store.base import JobStore
from ..domain.tokens import Authority, mask

# Free-text fields of a job record, set at creation.
TEXT_FIELDS = ("archive_system", "session", "agent", "task")
# A compare-and-set that misses means another writer moved the job; re-reading and recomputing
# converges quickly (each miss is someone else's success), so a small bound is plenty.
MAX_RACES = 64


@dataclass(frozen=True)
class EventResult:
    """What applying one event did: the record afterwards, and whether this call applied it."""

    record: dict
    applied: bool
    from_state: str
    event: str

    @property
    def duplicate(self) -> bool:
        """True when the event had been applied before (nothing changed now)."""
        return not self.applied


@dataclass(frozen=True)
class Change:
    """One planned compare-and-set: job ``uuid`` from ``from_state`` to ``to_state``, adding
    ``entry`` to its history (what ``Jobs.plan`` computes and ``Jobs.commit_waves`` writes)."""

    uuid: str
    from_state: str
    to_state: str
    entry: dict

    @property
    def event(self) -> str:
        """The event the change records."""
        return self.entry["name"]


def authorize(authority: Authority, uuid: str, event: str, token: object) -> None:
    """Raise AuthError unless ``token`` allows ``event`` on job ``uuid`` (no store needed)."""
    admin_only = lifecycle.is_admin_event(event)
    if not authority.allows(uuid, token, admin_only=admin_only):
        kind = "an administrative token" if admin_only else "the job's token or an admin token"
        raise AuthError(f"token {mask(token)} does not authorise {event!r} on job {uuid}; "
                        f"it needs {kind}")


def authorize_delete(authority: Authority, token: object) -> None:
    """Raise AuthError unless ``token`` is an administrative token (deleting needs one)."""
    if not authority.is_admin(token):
        raise AuthError(f"token {mask(token)} is not a valid administrative token; deleting "
                        "a job needs one (`reactor token admin`)")


class Jobs:
    """Job operations over one store, with one authority for tokens."""

    def __init__(self, store: JobStore, authority: Authority, verify_pipelines: bool = True,
                 clock: Callable[[], str] = records.now_iso,
                 archive_root: str | None = None):
        self.store = store
        self.authority = authority
        self.verify_pipelines = verify_pipelines
        self.clock = clock
        # The directory job archives must lie strictly below (``archive.claim``); None (none
        # known): a job can only be created without an archive path.
        self.archive_root = archive_root

    def create(self, pipeline_uuid: str, data: dict | None = None, child_of: list | None = None,
               uuid: str | None = None, **fields) -> tuple[dict, bool]:
        """Create the job (or find the existing one with the same identity); (record, created)."""
        check_typed(pipeline_uuid, "pipeline")
        # Caller data is held to the message contract's rule, whichever path it came by.
        data = _caller_data(data, private_data=False) or {}
        if isinstance(child_of, (str, bytes)) or not isinstance(child_of, (list, tuple,
                                                                          type(None))):
            raise TypeError("child_of must be a list of typed uuid strings")
        child_of = [check_any_typed(c, "child_of") for c in child_of or ()]
        for name in TEXT_FIELDS:
            if name in fields:
                check_text(fields[name], name)
        if uuid is not None:
            check_typed(uuid, "pipelinejob")
        if self.verify_pipelines and self.store.get_pipeline(pipeline_uuid) is None:
            raise UnknownPipeline(f"pipeline {pipeline_uuid} is not registered; register it with "
                                  "`reactor pipelines add` or switch verify_pipelines off")
        uid = uuid or job_uuid(pipeline_uuid, child_of, data)
        if "archive_path" in fields:
            # A job's archive must be its own: below the archive root, and neither another
            # job's archive nor inside or around one (what reset would refuse to clear).
            # ArchiveError before anything is written; "" stays "no archive".
            fields["archive_path"] = archive.claim(self.store, self.archive_root,
                                                   fields["archive_path"], uid)
        record = records.new_job_record(uuid=uid, pipeline_uuid=pipeline_uuid, data=data,
                                        child_of=child_of, date=self.clock(), **fields)
        return self.store.create_job(record)

    def get(self, uuid: str, with_history: bool = True) -> dict:
        """The visible job with ``uuid`` (without its history if asked); UnknownJob if none."""
        record = self.store.get_job(uuid, with_history=with_history)
        if record is None:
            raise UnknownJob(f"no job with uuid {uuid}")
        return record

    def authorize(self, uuid: str, event: str, token: object) -> None:
        """Raise AuthError unless ``token`` allows ``event`` on job ``uuid``."""
        authorize(self.authority, uuid, event, token)

    def apply(self, uuid: str, event: str, data: dict | None = None, token: object = None,
              key: str | None = None, record: dict | None = None,
              with_history: bool = True, private_data: bool = False) -> EventResult:
        """Authorise and apply one event with one compare-and-set; a repeated ``key`` is a no-op.

        Raises ``InvalidTransition`` (record unchanged) when the event is not allowed from the
        job's state, ``UnknownJob`` and ``AuthError`` as their names say. ``record`` is the
        job as the caller last read it, with or without its history; ``with_history=False``
        returns the applied record without it (the store then never reads the history).
        ``private_data``: ``data`` was just decoded and nobody else holds it, so the history
        entry takes it without a copy.
        """
        event = lifecycle.normalize_event(event)
        data = _caller_data(data, private_data)
        record = record if record is not None else self.get(uuid, with_history)
        self.authorize(uuid, event, token)
        for _ in range(MAX_RACES):
            if key is not None and key in records.applied_keys(record):
                return EventResult(record, False, record["state"], event)
            from_state = record["state"]
            try:
                to_state = lifecycle.applied_state(from_state, event)
            except InvalidTransition:
                if key is None or "history" in record:
                    raise
                # A redelivered event may not fit the state it already moved the job to: only
                # the history tells a duplicate from an invalid transition.
                record = self.get(uuid)
                continue
            entry = records.history_entry(event, data, self.clock(), key, copy=not private_data)
            committed = self.store.commit_event(uuid, from_state, to_state, entry,
                                                with_history=with_history)
            if committed is not None:
                return EventResult(committed, True, from_state, event)
            # Missed: another writer moved the job (or the state tried was a remembered guess
            # gone stale), or the key is there already (a duplicate). A moved job is retried
            # from the state it is in, read without its history; only the history, read when
            # the state did not move, tells a duplicate for certain.
            moved = self.get(uuid, with_history=False)
            record = moved if moved["state"] != from_state else self.get(uuid)
        raise StoreError(f"job {uuid} kept changing under {MAX_RACES} attempts to apply {event!r}")

    # --- group commit: ``apply`` split in two, so many jobs share one store write ------------
    def plan(self, uuid: str, event: str, data: dict | None, token: object, key: str | None,
             state: str, date: str | None = None, private_data: bool = False) -> Change:
        """Authorise ``event`` and compute its change from ``state`` (no I/O).

        The same checks as ``apply`` in the same order, raising the same errors; ``state`` is
        only the expected state: the compare-and-set in ``commit_waves`` verifies it."""
        event = lifecycle.normalize_event(event)
        data = _caller_data(data, private_data)
        self.authorize(uuid, event, token)
        to_state = lifecycle.applied_state(state, event)
        entry = records.history_entry(event, data, date or self.clock(), key,
                                      copy=not private_data)
        return Change(uuid, state, to_state, entry)

    def commit_waves(self, waves: list[list[Change]],
                     with_history: bool = True) -> list[list[EventResult | None]]:
        """Commit planned changes in one store write where the store can (one SQLite
        transaction), wave after wave. A wave holds changes of distinct jobs; wave k holds the
        k-th planned change of each job, planned from the state its change in wave k-1 leads
        to. None for each change whose compare-and-set missed (stale state, repeated key, job
        gone) or whose job missed earlier (not attempted): ``apply`` those one by one, in
        delivery order; that re-reads the job and recognises a duplicate."""
        committed = self.store.commit_waves(
            [[(c.uuid, c.from_state, c.to_state, c.entry) for c in wave] for wave in waves],
            with_history=with_history)
        return [[_committed(c, record) for c, record in zip(wave, records)]
                for wave, records in zip(waves, committed)]

    def commit(self, change: Change) -> EventResult | None:
        """Commit one planned change on its own (one store commit); None if its
        compare-and-set missed, as in ``commit_waves``."""
        return _committed(change, self.store.commit_event(
            change.uuid, change.from_state, change.to_state, change.entry, with_history=False))

    def delete(self, uuid: str, token: object, force: bool = True) -> bool:
        """Delete (``force``) or hide a job; needs an administrative token."""
        authorize_delete(self.authority, token)
        if self.store.get_job(uuid, include_hidden=True) is None:
            raise UnknownJob(f"no job with uuid {uuid}")
        return self.store.delete_job(uuid, force=force)

    def cancel(self, uuid: str) -> bool:
        """Delete a job that has processed no event beyond ``create`` (decided by the store)."""
        return self.store.delete_job(uuid, force=True, only_if_revision=1)


def _caller_data(data: object, private_data: bool) -> dict | None:
    """``data`` checked as caller data; a just-decoded message's data (``private_data``) was
    checked by the message contract already, and is only checked to be an object."""
    data = records.check_data(data)
    return data if private_data or data is None else check_json(data, "data")


def _committed(change: Change, record: dict | None) -> EventResult | None:
    """The result of ``change`` whose commit gave ``record`` (None: its compare-and-set missed)."""
    return None if record is None else EventResult(record, True, change.from_state, change.event)
