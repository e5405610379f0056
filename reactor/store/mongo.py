"""MongoDB store (pymongo): one document per job, one conditional update per state change.

Only single-document atomic operations are used (no transactions), so any MongoDB >= 5.0 will
do. Keys inside stored documents are escaped reversibly so caller data can never be read as an
operator or a dotted path. A job document's ``_id`` is its uuid (a unique index on ``uuid``
stays as a guard), so a job is found by the primary key on every server.

On MongoDB the compare-and-set (``find_one_and_update`` filtered on _id, visibility, state and
"no entry with this duplicate key") alone is atomic. Some MongoDB-wire servers do not apply a
single-document update atomically (FerretDB 1.x reads, computes and writes back by ``_id``,
losing concurrent writes) although they do make unique inserts atomic. For those, every write
to an existing job document also holds a short per-job lease lock (a document in ``job_locks``
whose ``_id`` is the job uuid, so taking it is one unique insert). Under the lock nobody else
writes the job, so there the compare runs in Python on the document read by exact ``_id`` and
the write goes by exact ``_id``: the only filter such servers answer from an index (FerretDB
1.x scans the whole collection for any other). ``job_locks="auto"`` turns the locks on only
for a server whose ``buildInfo`` says it is not MongoDB.
"""
from __future__ import annotations

import json
import random
import re
import secrets
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator
from urllib.parse import unquote

import pymongo
from bson.codec_options import CodecOptions
from bson.errors import BSONError
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import (
    BulkWriteError, ConfigurationError, ConnectionFailure, DuplicateKeyError, ExecutionTimeout,
    InvalidURI, OperationFailure, PyMongoError, WTimeoutError,
)
from pymongo.write_concern import WriteConcern

from ..errors import StoreError, StoreUnavailable
from ..records import LINKAGE_FIELDS
from .base import COLLECTIONS_WITH_LINKS, JobStore, archive_query
from .bson_codec import decode, encode_entry, encode_job, escape
from .checks import (
    check_changes, check_collection, check_delete, check_document, check_flag, check_job_record,
    check_pipeline, check_query, check_state_change, check_uuid, unlink,
)

DEFAULT_DATABASE = "reactor"
DEFAULT_TIMEOUT_MS = 3000
JOBS, PIPELINES, LOCKS = "jobs", "pipelines", "job_locks"
# Server error codes that mean "not now" rather than "never": failover, shutdown, time limits.
TRANSIENT_CODES = frozenset({6, 7, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
LOCK_LEASE_S = 10.0  # a lock older than this was left by a crashed writer and may be broken
LOCK_WAIT_S = 15.0  # waiting longer than this for a job's lock means the store is unusable now
_DUPLICATE_KEY = 11000
_NOT_IMPLEMENTED = 238
# Reads that leave out the history (``with_history=False``): all of it, or all but each
# entry's duplicate key, for the compare made here under a job lock.
NO_HISTORY = {"history": 0}
ONLY_HISTORY_KEYS = {"history.uuid": 0, "history.name": 0, "history.date": 0, "history.data": 0}

def _cas_filter(uuid: str, from_state: str, entry: dict) -> dict:
    """The compare-and-set filter: the visible job ``uuid``, in ``from_state``, without a
    history entry carrying ``entry``'s duplicate key."""
    query: dict = {"_id": uuid, "_visible": True, "state": from_state}
    if entry.get("key") is not None:
        # "no history entry has this key". $nor is MongoDB's exact equivalent of
        # {"history.key": {"$ne": key}}, and the one FerretDB 1.x also evaluates correctly
        # on arrays of subdocuments. Only keys are escaped, never values, so the stored key
        # equals entry["key"].
        query["$nor"] = [{"history.key": entry["key"]}]
    return query


def _matches(doc: dict | None, from_state: str, entry: dict) -> bool:
    """``_cas_filter`` evaluated here, on a document read under the job's lock."""
    if doc is None or doc.get("_visible") is not True or doc.get("state") != from_state:
        return False
    key = entry.get("key")
    return key is None or all(h.get("key") != key for h in doc.get("history", ()))


def _update(to_state: str, entry: dict) -> dict:
    """The update of a state change: state, last_event, updated, revision + 1, entry pushed."""
    stored = encode_entry(entry)
    return {"$set": {"state": to_state, "last_event": entry["name"], "updated": stored["date"]},
            "$inc": {"revision": 1}, "$push": {"history": stored}}


def _lock_projection(entry: dict, with_history: bool) -> dict | None:
    """What to read of a job compared here under its lock: everything, or no history but
    the entries' keys when the duplicate check needs them."""
    if with_history:
        return None
    return ONLY_HISTORY_KEYS if entry.get("key") is not None else NO_HISTORY


def _after(doc: dict, to_state: str, entry: dict, with_history: bool = True) -> dict:
    """The record as ``_update`` leaves ``doc`` (what reading it back would give); without
    ``history`` unless ``with_history``."""
    record = decode(doc)
    record.update(state=to_state, last_event=entry["name"], updated=entry["date"],
                  revision=record.get("revision", 0) + 1)
    if with_history:
        record["history"] = [*record.get("history", ()), json.loads(json.dumps(entry))]
    else:
        record.pop("history", None)  # at most the keys read for the duplicate check
    return record


def _holds(record: dict, entry: dict) -> bool:
    """True when ``record``'s history contains ``entry`` (as stored and read back)."""
    wanted = json.loads(json.dumps(entry))  # tuples → lists, as a read gives them back
    # Newest first: a just-committed entry is at (or near) the end.
    return any(h == wanted for h in reversed(record.get("history", ())))


# --- URIs and options --------------------------------------------------------------------------

def mask_uri(uri: str) -> str:
    """``uri`` with the password (if any) replaced by ``***``."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    authority, slash, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return uri
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hosts}{slash}{tail}"


def _passwords(uri: str) -> list[str]:
    # Both spellings: the URI's (percent-encoded) and the decoded one a driver message may show.
    authority = uri.partition("://")[2].partition("/")[0]
    userinfo = authority.rpartition("@")[0]
    if ":" not in userinfo:
        return []
    raw = userinfo.split(":", 1)[1]
    return sorted({raw, unquote(raw)} - {""}, key=len, reverse=True)


def _write_concern(w: Any, journal: Any) -> WriteConcern:
    if not isinstance(journal, bool):
        raise ValueError(f"journal must be True or False, got {journal!r}")
    if isinstance(w, str) and w.strip().isdigit():
        w = int(w.strip())
    if w != "majority" and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
        # w=0 (unacknowledged) is refused: a compare-and-set must report whether it matched.
        raise ValueError(f"write_concern must be 'majority' or a number >= 1, got {w!r}")
    return WriteConcern(w=w, j=journal)


class MongoJobStore(JobStore):
    """Jobs (collection ``jobs``), pipelines and linked documents in one MongoDB database."""

    def __init__(self, uri: str, database: str | None = None,
                 write_concern: str | int = "majority", journal: bool = True,
                 server_selection_timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 job_locks: str | bool = "auto"):
        self.uri = mask_uri(uri)  # the only form of the URI this object ever shows
        self._passwords = _passwords(uri)
        concern = _write_concern(write_concern, journal)
        if not isinstance(server_selection_timeout_ms, int) or \
                isinstance(server_selection_timeout_ms, bool) or server_selection_timeout_ms < 1:
            raise ValueError("server_selection_timeout_ms must be a positive integer, got "
                             f"{server_selection_timeout_ms!r}")
        if database is not None and (not isinstance(database, str) or not database):
            raise ValueError(f"database must be a non-empty string, got {database!r}")
        try:
            # The constructor does not block: it connects in the background.
            self._client = pymongo.MongoClient(
                uri, serverSelectionTimeoutMS=server_selection_timeout_ms, tz_aware=True,
                tzinfo=timezone.utc)
            # The URI's database wins; ``database`` names one when the URI does not.
            db = self._client.get_default_database(default=database or DEFAULT_DATABASE)
        except (InvalidURI, ConfigurationError, ValueError, TypeError) as exc:
            raise ValueError(f"invalid MongoDB URI {self.uri}: {self._clean(exc)}") from None
        options = CodecOptions(tz_aware=True, tzinfo=timezone.utc)
        self._db = db.with_options(codec_options=options, write_concern=concern)
        self.database = self._db.name
        self._jobs = self._db[JOBS]
        self._pipelines = self._db[PIPELINES]
        # Locks are redundant on MongoDB (see the module docstring), so they need no majority.
        self._locks = self._db[LOCKS].with_options(write_concern=WriteConcern(w=1))
        self._indexed: set[str] = set()
        try:
            with self._errors("create indexes"):
                self._jobs.create_index("uuid", unique=True)
                self._jobs.create_index([("created", pymongo.DESCENDING),
                                         ("uuid", pymongo.ASCENDING)])
                self._jobs.create_index("archive_path")  # archive_owners: exact and prefix
                self._pipelines.create_index("uuid", unique=True)
        except StoreError:
            self._client.close()
            raise
        self._indexed.update((JOBS, PIPELINES))
        self._update_projection = True  # until a server says it has no findAndModify projection
        self.job_locks = self._decide_job_locks(job_locks)

    def _decide_job_locks(self, setting: str | bool) -> bool:
        if setting in (True, "on"):
            return True
        if setting in (False, "off"):
            return False
        if setting != "auto":
            raise ValueError(f"job_locks must be 'auto', 'on' or 'off', got {setting!r}")
        with self._errors("read buildInfo"):
            info = self._client.admin.command("buildInfo")
        # MongoDB's buildInfo names only its own version fields; a server that announces the
        # version of another product (e.g. ferretdbVersion) is an emulation: lock.
        return bool({k for k in info if k.endswith("Version")} - {"version", "gitVersion"})

    # --- plumbing ------------------------------------------------------------------------------
    def _clean(self, exc: BaseException) -> str:
        text = str(exc)
        for secret in self._passwords:
            text = text.replace(secret, "***")
        return text

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate pymongo errors: unreachable → StoreUnavailable, other refusals → StoreError."""
        try:
            yield
        except (ConnectionFailure, ExecutionTimeout, WTimeoutError) as exc:
            # ConnectionFailure covers AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError.
            raise StoreUnavailable(f"MongoDB at {self.uri} is unavailable ({action}): "
                                   f"{self._clean(exc)}") from None
        except BSONError as exc:
            raise ValueError(f"cannot store the document ({action}): {self._clean(exc)}") from None
        except OperationFailure as exc:
            if exc.code in TRANSIENT_CODES or exc.has_error_label("RetryableWriteError"):
                raise StoreUnavailable(f"MongoDB at {self.uri} is unavailable ({action}): "
                                       f"{self._clean(exc)}") from None
            raise StoreError(f"MongoDB at {self.uri} refused to {action}: "
                             f"{self._clean(exc)}") from None
        except PyMongoError as exc:
            raise StoreError(f"MongoDB at {self.uri} refused to {action}: "
                             f"{self._clean(exc)}") from None

    @contextmanager
    def _job_lock(self, uuid: str) -> Iterator[None]:
        """Hold the lease lock of job ``uuid`` when locks are on (call inside ``_errors``)."""
        if not self.job_locks:
            yield
            return
        owner = secrets.token_hex(8)
        self._acquire(uuid, owner)
        try:
            yield
        finally:
            self._locks.delete_one({"_id": uuid, "owner": owner})

    def _acquire(self, uuid: str, owner: str) -> None:
        deadline = time.monotonic() + LOCK_WAIT_S
        next_check = time.monotonic() + 1.0
        delay = 0.001
        while True:
            try:
                self._locks.insert_one({"_id": uuid, "owner": owner,
                                        "at": datetime.now(timezone.utc)})
                return
            except DuplicateKeyError:
                pass
            now = time.monotonic()
            if now > deadline:
                raise StoreUnavailable(f"job {uuid} stayed locked by another writer for "
                                       f"{LOCK_WAIT_S:g} s in MongoDB at {self.uri}")
            if now > next_check:
                self._break_stale_lock(uuid)
                next_check = now + 1.0
            # jitter keeps waiting writers from retrying in lockstep
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.032)

    def _break_stale_lock(self, uuid: str) -> None:
        lock = self._locks.find_one({"_id": uuid})
        if lock is None:
            return
        age = (datetime.now(timezone.utc) - lock["at"]).total_seconds()
        if age > LOCK_LEASE_S:  # its writer died holding it; its change was never committed
            self._locks.delete_one({"_id": uuid, "owner": lock["owner"]})

    def _collection(self, name: str):
        collection = self._db[name]
        if name not in self._indexed:
            with self._errors(f"index collection {name}"):
                collection.create_index("uuid", unique=True)
            self._indexed.add(name)
        return collection

    # --- jobs ----------------------------------------------------------------------------------
    def create_job(self, record: dict) -> tuple[dict, bool]:
        """Insert ``record`` unless a job with its uuid exists; return (stored record, created)."""
        doc = encode_job(check_job_record(record))
        doc["_id"] = record["uuid"]  # decode() drops it: callers only ever see "uuid"
        with self._errors("create a job"):
            try:
                self._jobs.insert_one(doc)
                return decode(doc), True
            except DuplicateKeyError:
                # By uuid, not _id: the unique uuid index is what refused the insert if a
                # document of an earlier layout (ObjectId _id) holds this uuid.
                existing = self._jobs.find_one({"uuid": record["uuid"]})
        if existing is None:  # deleted between our insert and our read: the insert now wins
            return self.create_job(record)
        return decode(existing), False

    def get_job(self, uuid: str, include_hidden: bool = False,
                with_history: bool = True) -> dict | None:
        """The job with ``uuid`` (soft-deleted ones only when asked), or None; without its
        ``history`` (the server does not send it) when ``with_history`` is False."""
        check_uuid(uuid, "job uuid")
        check_flag(with_history, "with_history")
        # Exactly {_id: …}: the one filter every MongoDB-wire server answers from an index
        # (FerretDB 1.x scans the collection for anything else); visibility is checked here.
        with self._errors("read a job"):
            doc = self._jobs.find_one({"_id": uuid}, None if with_history else NO_HISTORY)
        if doc is None or not (include_hidden or doc.get("_visible") is True):
            return None
        return decode(doc)

    def list_jobs(self, state: str | None = None, pipeline_uuid: str | None = None,
                  limit: int = 100, include_hidden: bool = False) -> list[dict]:
        """Jobs, newest first (then by uuid), optionally filtered by state and pipeline."""
        check_query(state, pipeline_uuid, limit)
        query: dict = {}
        if not include_hidden:
            query["_visible"] = True
        if state is not None:
            query["state"] = state
        if pipeline_uuid is not None:
            query["pipeline_uuid"] = pipeline_uuid
        with self._errors("list jobs"):
            cursor = self._jobs.find(query).sort(
                [("created", pymongo.DESCENDING), ("uuid", pymongo.ASCENDING)]).limit(limit)
            return [decode(doc) for doc in cursor]

    def commit_event(self, uuid: str, from_state: str, to_state: str, entry: dict,
                     with_history: bool = True) -> dict | None:
        """One compare-and-set: visible job in ``from_state`` → ``to_state``, ``entry`` appended
        (the record returned, and read, without ``history`` unless ``with_history``)."""
        check_state_change(uuid, from_state, to_state, entry)
        check_flag(with_history, "with_history")
        update = _update(to_state, entry)
        with self._errors("commit an event"), self._job_lock(uuid):
            if not self.job_locks:
                doc = self._find_one_and_update(_cas_filter(uuid, from_state, entry), update,
                                                with_history)
                return decode(doc) if doc is not None else None
            # Under the job's lease no other writer touches the document, so the compare runs
            # here and the write goes by exact _id: on such servers both are indexed lookups,
            # where the compare-and-set filter would scan the collection.
            doc = self._jobs.find_one({"_id": uuid}, _lock_projection(entry, with_history))
            if not _matches(doc, from_state, entry):
                return None
            if self._jobs.update_one({"_id": uuid}, update).matched_count != 1:
                return None
        return _after(doc, to_state, entry, with_history)

    def _find_one_and_update(self, query: dict, update: dict, with_history: bool) -> dict | None:
        """``find_one_and_update`` returning the document after the update, history only when
        ``with_history`` (then left out by the server when it can)."""
        if not with_history and self._update_projection:
            try:
                return self._jobs.find_one_and_update(query, update, projection=NO_HISTORY,
                                                      return_document=ReturnDocument.AFTER)
            except OperationFailure as exc:
                if exc.code != _NOT_IMPLEMENTED:
                    raise
                # A server without projections on findAndModify refuses the command whole,
                # before it runs: nothing was written, so asking again without one is safe.
                self._update_projection = False
        doc = self._jobs.find_one_and_update(query, update, return_document=ReturnDocument.AFTER)
        if doc is not None and not with_history:
            doc.pop("history", None)
        return doc

    def commit_events(self, changes: Iterable[tuple[str, str, str, dict]],
                      with_history: bool = True) -> list[dict | None]:
        """Group commit: ``commit_event`` for each change (distinct jobs), in one round trip.

        Without job locks (MongoDB): one unordered ``bulk_write`` of exactly ``commit_event``'s
        conditional updates, so each change is still its own atomic compare-and-set carrying
        its duplicate key, then one ``find`` of the batch's jobs. A bulk result only counts
        matches, so that read is what tells which changes landed: a change counts as committed
        when its own history entry is in the record (entries carry a random uuid, so the find
        asks for the jobs holding it and needs no history back). With job
        locks: the batch's locks in one unordered insert, each job read by _id and compared
        here (as ``commit_event`` does under its lock), one unordered bulk write by _id, the
        locks released in one delete. Jobs whose lock was busy are retried together, never
        while this batch holds locks (so two batches cannot wait on each other); locks older
        than the lease (left by a writer that died, which with batches may be many at once)
        are broken as soon as they are seen. A change that missed, that the server refused
        alone (say, a document grown past 16 MB), or whose job stayed locked by a live writer
        for ``LOCK_WAIT_S`` is None: the caller applies those one by one, where the duplicate
        key makes a second try safe.
        """
        batch = check_changes(changes)
        check_flag(with_history, "with_history")
        if not batch:
            return []
        results: list[dict | None] = [None] * len(batch)
        with self._errors("commit a batch of events"):
            if not self.job_locks:
                self._commit_unlocked(batch, results, with_history)
                return results
            owner = secrets.token_hex(8)
            waiting = list(range(len(batch)))
            deadline = time.monotonic() + LOCK_WAIT_S
            delay = 0.002
            while True:
                locked = self._acquire_batch([batch[i][0] for i in waiting], owner)
                if locked:
                    try:
                        self._commit_locked([i for i in waiting if batch[i][0] in locked],
                                            batch, results, with_history)
                    finally:
                        self._locks.delete_many({"_id": {"$in": sorted(locked)},
                                                 "owner": owner})
                waiting = [i for i in waiting if batch[i][0] not in locked]
                if not waiting or time.monotonic() > deadline:
                    return results
                if self._break_stale_locks([batch[i][0] for i in waiting]):
                    continue  # some are free now: take them at once
                # jitter keeps waiting writers from retrying in lockstep
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.25)

    def _break_stale_locks(self, uuids: list[str]) -> bool:
        """Delete the locks of ``uuids`` older than the lease; True if any was broken."""
        now = datetime.now(timezone.utc)
        broken = False
        for lock in self._locks.find({"_id": {"$in": uuids}}):
            if (now - lock["at"]).total_seconds() > LOCK_LEASE_S:
                # Conditional on the owner: a lock taken anew meanwhile is left alone.
                deleted = self._locks.delete_one({"_id": lock["_id"], "owner": lock["owner"]})
                broken |= deleted.deleted_count == 1
        return broken

    def _commit_unlocked(self, batch: list[tuple[str, str, str, dict]],
                         results: list[dict | None], with_history: bool) -> None:
        """Compare-and-set filters in one bulk write, then one read to see which landed."""
        self._bulk_write([UpdateOne(_cas_filter(uuid, from_state, entry),
                                    _update(to_state, entry))
                          for uuid, from_state, to_state, entry in batch])
        if all(isinstance(entry.get("uuid"), str) for *_, entry in batch):
            # Entries carry a unique uuid: the server tells which jobs hold theirs, so the
            # read needs no history (and sends none unless asked).
            landed = {doc["_id"]: doc for doc in self._jobs.find(
                {"$or": [{"_id": uuid, "history.uuid": entry["uuid"]}
                         for uuid, _, _, entry in batch]},
                None if with_history else NO_HISTORY)}
            for i, (uuid, *_) in enumerate(batch):
                doc = landed.get(uuid)
                if doc is not None and doc.get("_visible") is True:
                    results[i] = decode(doc)
            return
        found = {doc["_id"]: doc for doc in self._jobs.find(
            {"_id": {"$in": [uuid for uuid, *_ in batch]}})}
        for i, (uuid, _, _, entry) in enumerate(batch):
            doc = found.get(uuid)
            if doc is not None and doc.get("_visible") is True:
                record = decode(doc)
                if _holds(record, entry):
                    if not with_history:
                        del record["history"]
                    results[i] = record

    def _commit_locked(self, indexes: list[int], batch: list[tuple[str, str, str, dict]],
                       results: list[dict | None], with_history: bool) -> None:
        """Under the batch's locks: read and compare each job, one bulk write by _id."""
        # One exact-_id read per job: such servers scan the collection for an $in.
        docs = {i: self._jobs.find_one({"_id": batch[i][0]},
                                       _lock_projection(batch[i][3], with_history))
                for i in indexes}
        todo = [i for i in indexes if _matches(docs[i], batch[i][1], batch[i][3])]
        refused = self._bulk_write([UpdateOne({"_id": batch[i][0]},
                                              _update(batch[i][2], batch[i][3])) for i in todo])
        for n, i in enumerate(todo):
            if n not in refused:
                results[i] = _after(docs[i], batch[i][2], batch[i][3], with_history)

    def _acquire_batch(self, uuids: list[str], owner: str) -> set[str]:
        """Take the lease locks of ``uuids`` without waiting; the set of those now held."""
        now = datetime.now(timezone.utc)
        try:
            self._locks.insert_many([{"_id": u, "owner": owner, "at": now} for u in uuids],
                                    ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors") or \
                    any(e.get("code") != _DUPLICATE_KEY for e in errors):
                # Not just "busy": give back what we did take, then report the failure.
                self._locks.delete_many({"_id": {"$in": uuids}, "owner": owner})
                raise
            busy = {uuids[e["index"]] for e in errors}
            return set(uuids) - busy
        return set(uuids)

    def _bulk_write(self, operations: list[UpdateOne]) -> set[int]:
        """One unordered bulk write; the indexes of operations the server refused alone."""
        if not operations:
            return set()
        try:
            self._jobs.bulk_write(operations, ordered=False)
        except BulkWriteError as exc:
            # A change refused on its own merits stays uncommitted. A write concern failure or
            # a transient refusal says nothing certain about the batch: retry it whole (the
            # duplicate keys make that safe).
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors") or \
                    {e.get("code") for e in errors} & TRANSIENT_CODES:
                raise StoreUnavailable(f"MongoDB at {self.uri} is unavailable (commit a batch "
                                       f"of events): {self._clean(exc)}") from None
            return {e["index"] for e in errors}
        return set()

    def delete_job(self, uuid: str, force: bool = True,
                   only_if_revision: int | None = None) -> bool:
        """Hard-delete the job and unlink its uuid everywhere (``force``), or hide it."""
        check_uuid(uuid, "job uuid")
        check_delete(force, only_if_revision)
        query: dict = {"_id": uuid}
        if only_if_revision is not None:
            query["revision"] = only_if_revision
        if not force:
            query["_visible"] = True
            with self._errors("hide a job"), self._job_lock(uuid):
                hidden = self._jobs.update_one(query, {"$set": {"_visible": False}})
            return hidden.modified_count == 1
        with self._errors("delete a job"):
            with self._job_lock(uuid):
                if self._jobs.delete_one(query).deleted_count != 1:
                    return False
            self._unlink_everywhere(uuid)
        return True

    def _unlink_everywhere(self, uuid: str) -> None:
        # No transactions: the job is deleted first, then each collection is cleaned with
        # idempotent updates. Other jobs are rewritten one by one under their own locks, since
        # events may be committing to them right now.
        linking = {"$or": [{field: uuid} for field in LINKAGE_FIELDS]}
        for other in self._jobs.distinct("_id", linking):
            with self._job_lock(other):
                self._unlink_job(other, uuid)
        names = set(self._db.list_collection_names()) | set(COLLECTIONS_WITH_LINKS)
        for name in sorted(names - {JOBS, LOCKS}):
            if name.startswith("system."):
                continue
            collection = self._db[name]
            for field in LINKAGE_FIELDS:
                # $elemMatch keeps $pull to arrays (it fails on a scalar); a scalar reference
                # is then dropped with $unset.
                collection.update_many({field: {"$elemMatch": {"$eq": uuid}}},
                                       {"$pull": {field: uuid}})
                collection.update_many({field: uuid}, {"$unset": {field: ""}})

    def _unlink_job(self, job: str, uuid: str) -> None:
        doc = self._jobs.find_one({"_id": job})
        if doc is None:
            return
        fields = {f: doc[f] for f in LINKAGE_FIELDS if f in doc}
        remaining = dict(fields)
        if not unlink(remaining, uuid):
            return
        change: dict = {}
        if remaining:
            change["$set"] = remaining
        dropped = set(fields) - set(remaining)
        if dropped:
            change["$unset"] = {f: "" for f in dropped}
        self._jobs.update_one({"_id": job}, change)

    def archive_owners(self, path: str | list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
        """``(uuid, archive_path)`` of every job (hidden ones too) whose archive path is
        ``path`` (or one of a list), below it or one of its ancestors, by uuid (see
        ``base.archive_query``).

        One query on the ``archive_path`` index: ``$in`` for the exact values, an anchored
        ``$regex`` of each escaped prefix for those below (an anchored literal prefix is
        answered from the index on MongoDB)."""
        exact, prefixes = archive_query(path)
        query = {"$or": [{"archive_path": {"$in": exact}},
                         *({"archive_path": {"$regex": "^" + re.escape(prefix)}}
                           for prefix in prefixes)]}
        with self._errors("find archive owners"):
            docs = list(self._jobs.find(query, {"uuid": 1, "archive_path": 1}))
        found = {d["uuid"]: d["archive_path"] for d in docs
                 if isinstance(d.get("uuid"), str) and isinstance(d.get("archive_path"), str)}
        return sorted(found.items())

    # --- pipelines -----------------------------------------------------------------------------
    def add_pipeline(self, doc: dict) -> tuple[dict, bool]:
        """Register a pipeline ``{uuid, name, ...}`` unless its uuid exists; (stored, created)."""
        stored = escape(check_pipeline(doc))
        with self._errors("register a pipeline"):
            try:
                self._pipelines.insert_one(stored)
                return decode(stored), True
            except DuplicateKeyError:
                existing = self._pipelines.find_one({"uuid": doc["uuid"]})
        if existing is None:  # never expected: pipelines are not deleted
            return self.add_pipeline(doc)
        return decode(existing), False

    def get_pipeline(self, uuid: str) -> dict | None:
        """The pipeline with ``uuid``, or None."""
        check_uuid(uuid, "pipeline uuid")
        with self._errors("read a pipeline"):
            doc = self._pipelines.find_one({"uuid": uuid})
        return decode(doc) if doc is not None else None

    def list_pipelines(self) -> list[dict]:
        """Every registered pipeline, by name (then uuid)."""
        with self._errors("list pipelines"):
            cursor = self._pipelines.find().sort([("name", pymongo.ASCENDING),
                                                  ("uuid", pymongo.ASCENDING)])
            return [decode(doc) for doc in cursor]

    # --- other linked documents ----------------------------------------------------------------
    def put_document(self, collection: str, doc: dict) -> None:
        """Insert or replace a document (keyed by its ``uuid``) in another collection."""
        check_collection(collection)
        stored = escape(check_document(doc))
        with self._errors(f"write to {collection}"):
            self._collection(collection).replace_one({"uuid": doc["uuid"]}, stored, upsert=True)

    def get_document(self, collection: str, uuid: str) -> dict | None:
        """A document of another collection, or None."""
        check_collection(collection)
        check_uuid(uuid, "document uuid")
        with self._errors(f"read from {collection}"):
            doc = self._db[collection].find_one({"uuid": uuid})
        return decode(doc) if doc is not None else None

    # --- lifecycle -----------------------------------------------------------------------------
    def ping(self) -> None:
        """Return if the server answers; raise StoreUnavailable otherwise."""
        try:
            with self._errors("ping"):
                self._client.admin.command("ping")
        except StoreUnavailable:
            raise
        except StoreError as exc:
            raise StoreUnavailable(str(exc)) from None

    def close(self) -> None:
        """Close the client's connections (idempotent)."""
        self._client.close()

    def __repr__(self) -> str:
        return f"MongoJobStore({self.uri!r}, database={self.database!r})"
