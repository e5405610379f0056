"""MongoDB store (pymongo): one document per job, one compare-and-set per state change.

Written for MongoDB >= 5.0 semantics, and nothing but single-document atomic operations (no
transactions, so sharding by job uuid stays possible). Every state change is one conditional
update, ``find_one_and_update`` or an ``UpdateOne`` of a bulk write, filtered on the job's
uuid, its visibility, its state and "no history entry carries this duplicate key"; the server
evaluates the filter and applies the update as one atomic step, so of two writers racing on a
job exactly one matches and the other misses (and re-reads). Deletes and unlinks are likewise
one atomic delete or update per document, filtered or expressed as operators (``$pull``,
``$unset``) so that a change another writer makes meanwhile is never overwritten. Keys inside
stored documents are escaped reversibly so caller data can never be read as an operator or a
dotted path (``bson_codec``).

Jobs are found by their ``uuid`` field, which a unique index keys, never by ``_id``. Databases
hold job documents of two layouts: the first release let the driver pick ``_id`` (an ObjectId);
later ones set ``_id`` to the uuid, for a server that answered only ``_id`` filters from an
index. Both layouts carry ``uuid`` and both had the unique ``uuid`` index, so a filter on
``uuid`` reads, commits, hides and deletes documents of either layout, with no conversion (an
``_id`` cannot be changed in place: converting would mean a non-atomic copy and delete of every
document on a live store). On MongoDB the ``uuid`` index answers as fast as the ``_id`` one,
so keying by ``_id`` buys nothing there and would leave the first layout unreachable. New
documents still get ``_id`` = uuid, the layout of the release before this one, so that a
rollback to it still finds every job written since.

Group commit (a batch of changes in one bulk write, no read-back) is ``mongo_batch``.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from datetime import timezone
from typing import Any, Iterable, Iterator
from urllib.parse import unquote

import pymongo
from bson.codec_options import CodecOptions
from bson.errors import BSONError
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import (
    ConfigurationError, ConnectionFailure, DuplicateKeyError, ExecutionTimeout,
    InvalidURI, OperationFailure, PyMongoError, WTimeoutError,
)
from pymongo.write_concern import WriteConcern

from ..domain.tokens import mask_url
from ..domain.errors import StoreError, StoreUnavailable
from ..domain.records import LINKAGE_FIELDS
from .base import COLLECTIONS_WITH_LINKS, JobStore, archive_query
from .bson_codec import decode, encode_job, escape
from .mongo_batch import (
    NO_HISTORY, TRANSIENT_CODES, BatchCommits, KnownJobs, cas_filter, has_entry_uuids, update,
)
from .checks import (
    check_changes, check_collection, check_delete, check_document, check_flag, check_job_record,
    check_pipeline, check_query, check_state_change, check_uuid, check_waves,
)

DEFAULT_DATABASE = "reactor"
DEFAULT_TIMEOUT_MS = 3000
JOBS, PIPELINES = "jobs", "pipelines"


# --- URIs and options --------------------------------------------------------------------------

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


class MongoJobStore(BatchCommits, JobStore):
    """Jobs (collection ``jobs``), pipelines and linked documents in one MongoDB database."""

    def __init__(self, uri: str, database: str | None = None,
                 write_concern: str | int = "majority", journal: bool = True,
                 server_selection_timeout_ms: int = DEFAULT_TIMEOUT_MS):
        self.uri = mask_url(uri)  # the only form of the URI this object ever shows
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
        self._indexed: set[str] = set()
        self._known = KnownJobs()
        try:
            with self._errors("create indexes"):
                self._jobs.create_index("uuid", unique=True)  # the job's key, in every layout
                self._jobs.create_index([("created", pymongo.DESCENDING),
                                         ("uuid", pymongo.ASCENDING)])
                self._jobs.create_index("archive_path")  # archive_owners: exact and prefix
                self._pipelines.create_index("uuid", unique=True)
        except StoreError:
            self._client.close()
            raise
        self._indexed.update((JOBS, PIPELINES))

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
        # The layout of the release before (see the module docstring); decode() drops _id.
        doc["_id"] = record["uuid"]
        with self._errors("create a job"):
            try:
                self._jobs.insert_one(doc)
                self._known.put(doc)
                return decode(doc), True
            except DuplicateKeyError:
                # By uuid, not _id: the unique uuid index is what refused the insert if a
                # document of an earlier layout (ObjectId _id) holds this uuid.
                existing = self._jobs.find_one({"uuid": record["uuid"]})
        if existing is None:  # deleted between our insert and our read: the insert now wins
            return self.create_job(record)
        self._known.put(existing)
        return decode(existing), False

    def get_job(self, uuid: str, include_hidden: bool = False,
                with_history: bool = True) -> dict | None:
        """The job with ``uuid`` (soft-deleted ones only when asked), or None; without its
        ``history`` (the server does not send it) when ``with_history`` is False."""
        check_uuid(uuid, "job uuid")
        check_flag(with_history, "with_history")
        query: dict = {"uuid": uuid}
        if not include_hidden:
            query["_visible"] = True
        with self._errors("read a job"):
            doc = self._jobs.find_one(query, None if with_history else NO_HISTORY)
        if doc is None:
            self._known.drop(uuid)
            return None
        self._known.put(doc)
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
        with self._errors("commit an event"):
            doc = self._jobs.find_one_and_update(
                cas_filter(uuid, from_state, entry), update(to_state, entry),
                projection=None if with_history else NO_HISTORY,
                return_document=ReturnDocument.AFTER)
        if doc is None:  # what this store remembers of the job may be what made it miss
            self._known.drop(uuid)
            return None
        self._known.put(doc)
        return decode(doc)

    def commit_events(self, changes: Iterable[tuple[str, str, str, dict]],
                      with_history: bool = True) -> list[dict | None]:
        """Group commit: ``commit_event`` for each change (distinct jobs), in one round trip.

        Without the history (the consumer's case), ``commit_waves`` of the one wave. With it,
        one unordered ``bulk_write`` of exactly ``commit_event``'s conditional updates, so each
        change is still its own atomic compare-and-set carrying its duplicate key, then one
        ``find`` of the batch's jobs. A bulk result only counts matches, so that read is what
        tells which changes landed: a change counts as committed when its own history entry is
        in the record (entries carry a random uuid, so the find asks for the jobs holding it
        and needs no history back). A change that missed, or that the server refused alone
        (say, a document grown past 16 MB), is None: the caller applies those one by one, where
        the duplicate key makes a second try safe.
        """
        batch = check_changes(changes)
        check_flag(with_history, "with_history")
        if not batch:
            return []
        if not with_history and has_entry_uuids(batch):
            with self._errors("commit a batch of events"):
                return self._commit_remembered([batch])[0]
        results: list[dict | None] = [None] * len(batch)
        with self._errors("commit a batch of events"):
            self._bulk_write([UpdateOne(cas_filter(uuid, from_state, entry),
                                        update(to_state, entry))
                              for uuid, from_state, to_state, entry in batch])
            if has_entry_uuids(batch):
                self._read_landed_by_entry(batch, results, with_history)
            else:
                self._read_landed_by_history(batch, results, with_history)
        return results

    def commit_waves(self, waves: Iterable[Iterable[tuple[str, str, str, dict]]],
                     with_history: bool = True) -> list[list[dict | None]]:
        """``commit_events`` of each wave in order; without the history, every wave in ONE
        bulk write (``_commit_remembered``). A change whose job missed in an earlier wave is
        not attempted (None). Malformed input refuses every wave before anything is written."""
        checked = check_waves(waves)
        check_flag(with_history, "with_history")
        if with_history or not all(map(has_entry_uuids, checked)):
            return super().commit_waves(checked, with_history)
        if not any(checked):
            return [[] for _ in checked]
        with self._errors("commit a batch of events"):
            return self._commit_remembered(checked)

    def delete_job(self, uuid: str, force: bool = True,
                   only_if_revision: int | None = None) -> bool:
        """Hard-delete the job and unlink its uuid everywhere (``force``), or hide it."""
        check_uuid(uuid, "job uuid")
        check_delete(force, only_if_revision)
        # One conditional write, atomic on the server: a commit racing with it either lands
        # first (and then the revision condition sees it) or misses the job.
        query: dict = {"uuid": uuid}
        if only_if_revision is not None:
            query["revision"] = only_if_revision
        if not force:
            query["_visible"] = True
            with self._errors("hide a job"):
                hidden = self._jobs.update_one(query, {"$set": {"_visible": False}})
            self._known.drop(uuid)
            return hidden.modified_count == 1
        with self._errors("delete a job"):
            deleted = self._jobs.delete_one(query).deleted_count == 1
            self._known.drop(uuid)
            if not deleted:
                return False
            try:
                self._unlink_everywhere(uuid)
            finally:
                self._known.clear()  # the unlinking changed other jobs' linkage fields
        return True

    def _unlink_everywhere(self, uuid: str) -> None:
        """Remove ``uuid`` from the linkage fields of every document, jobs included."""
        # No transactions: the job is deleted first, then every collection is cleaned with
        # idempotent updates. Each is one atomic update per document that touches only the
        # reference itself ($pull, $unset), so an event committing to a linked job meanwhile
        # keeps its change, and so does another delete unlinking the same document.
        names = set(self._db.list_collection_names()) | set(COLLECTIONS_WITH_LINKS)
        for name in sorted(names):
            if name.startswith("system."):
                continue
            collection = self._db[name]
            for field in LINKAGE_FIELDS:
                # $elemMatch keeps $pull to arrays (it fails on a scalar). A scalar reference
                # is dropped with $unset, never an array: one written meanwhile keeps its
                # other references.
                collection.update_many({field: {"$elemMatch": {"$eq": uuid}}},
                                       {"$pull": {field: uuid}})
                collection.update_many({field: {"$eq": uuid, "$not": {"$type": "array"}}},
                                       {"$unset": {field: ""}})

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
