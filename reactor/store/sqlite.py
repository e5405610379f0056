"""Embedded store: one SQLite file (stdlib ``sqlite3``), safe for several processes at once.

Every write runs in a ``BEGIN IMMEDIATE`` transaction, so the read-check-write of a
compare-and-set is atomic across processes; WAL mode lets readers proceed while one writer holds
the lock. Records are kept as JSON text, with the columns queries need pulled out beside them.

The input checks at the top are shared with the MongoDB backend so both refuse exactly the same
inputs (they would sit best in ``base.py``).
"""
from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from .. import jsonvalues
from ..errors import StoreError, StoreUnavailable
from ..records import LINKAGE_FIELDS
from .base import JobStore

T = TypeVar("T")

# --- input checks shared by both backends ------------------------------------------------------

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
COLLECTION_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
RESERVED_COLLECTIONS = ("jobs", "pipelines")
# MongoDB refuses documents nested deeper than 100 levels and integers beyond 64 bits; the
# embedded store refuses them too, so both backends accept exactly the same records.
MAX_DEPTH = 100


def check_json(value: Any, what: str) -> None:
    """Raise ValueError unless ``value`` is JSON-compatible (string keys, finite numbers, int64)."""
    jsonvalues.check_json(value, what, MAX_DEPTH)


def check_timestamp(value: Any, what: str) -> str:
    """Return ``value`` if it is a timestamp as ``records.now_iso`` writes it, else ValueError."""
    if isinstance(value, str) and TIMESTAMP.match(value):
        try:
            datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
        except ValueError:
            pass
        else:
            return value
    raise ValueError(f"{what} must be a UTC timestamp like 2024-01-31T12:00:00.000Z, "
                     f"got {value!r}")


def check_uuid(value: Any, what: str) -> str:
    """Return ``value`` if it is a non-empty string, else raise ValueError naming ``what``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def check_collection(name: Any) -> str:
    """Return ``name`` if it may name a collection of linked documents, else ValueError."""
    if not isinstance(name, str) or not COLLECTION_NAME.match(name) or len(name) > 64:
        raise ValueError(f"collection name {name!r} is invalid; use lower-case letters, digits "
                         "and underscores, starting with a letter or underscore")
    if name in RESERVED_COLLECTIONS:
        raise ValueError(f"collection {name!r} is reserved; use the job or pipeline operations")
    return name


def _check_top_level(doc: dict, what: str) -> None:
    # MongoDB owns "_id" (immutable, unique); neither backend lets a caller set it.
    if "_id" in doc:
        raise ValueError(f"{what} must not have an '_id' field; the store manages it")


def check_entry(entry: Any) -> dict:
    """Return ``entry`` if it is a well-formed history entry, else raise ValueError."""
    if not isinstance(entry, dict):
        raise ValueError(f"history entry must be a dict, got {type(entry).__name__}")
    check_uuid(entry.get("name"), "history entry 'name'")
    check_timestamp(entry.get("date"), "history entry 'date'")
    if entry.get("data") is not None and not isinstance(entry["data"], dict):
        raise ValueError("history entry 'data' must be a dict or None")
    if entry.get("key") is not None and not isinstance(entry["key"], str):
        raise ValueError("history entry 'key' must be a string or None")
    check_json(entry, "history entry")
    return entry


def check_changes(changes: Any) -> list[tuple[str, str, str, dict]]:
    """Return ``changes`` as a list if every one is a well-formed change for a distinct job.

    A change is ``(uuid, from_state, to_state, entry)``; a bad one raises ValueError naming
    its position, so a batch is refused whole before anything is written.
    """
    try:
        items = list(changes)
    except TypeError:
        raise ValueError(f"changes must be a sequence of (uuid, from_state, to_state, entry), "
                         f"got {type(changes).__name__}") from None
    seen: dict[str, int] = {}
    out = []
    for index, change in enumerate(items):
        if not isinstance(change, (tuple, list)) or len(change) != 4:
            raise ValueError(f"change {index} must be (uuid, from_state, to_state, entry), "
                             f"got {change!r:.80}")
        uuid, from_state, to_state, entry = change
        try:
            check_uuid(uuid, "job uuid")
            check_uuid(from_state, "from_state")
            check_uuid(to_state, "to_state")
            check_entry(entry)
        except ValueError as exc:
            raise ValueError(f"change {index}: {exc}") from None
        if uuid in seen:
            # One compare-and-set per job and batch: the second change of a job must be
            # computed from the first one's result, so it belongs in a later batch.
            raise ValueError(f"change {index}: job {uuid} already has change {seen[uuid]} in "
                             "this batch; a batch holds at most one change per job")
        seen[uuid] = index
        out.append((uuid, from_state, to_state, entry))
    return out


def check_job_record(record: Any) -> dict:
    """Return a copy of ``record`` (with ``_visible`` defaulted) if it is a storable job."""
    if not isinstance(record, dict):
        raise ValueError(f"job record must be a dict, got {type(record).__name__}")
    _check_top_level(record, "job record")
    check_uuid(record.get("uuid"), "job 'uuid'")
    check_uuid(record.get("pipeline_uuid"), "job 'pipeline_uuid'")
    check_uuid(record.get("state"), "job 'state'")
    revision = record.get("revision")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        raise ValueError(f"job 'revision' must be a non-negative integer, got {revision!r}")
    check_timestamp(record.get("created"), "job 'created'")
    check_timestamp(record.get("updated"), "job 'updated'")
    if not isinstance(record.get("history"), list):
        raise ValueError("job 'history' must be a list of entries")
    for entry in record["history"]:
        check_entry(entry)
    if not isinstance(record.get("_visible", True), bool):
        raise ValueError("job '_visible' must be a boolean")
    check_json(record, "job record")
    return {**record, "_visible": record.get("_visible", True)}


def check_pipeline(doc: Any) -> dict:
    """Return ``doc`` if it is a registrable pipeline ``{uuid, name, ...}``, else ValueError."""
    if not isinstance(doc, dict):
        raise ValueError(f"pipeline must be a dict, got {type(doc).__name__}")
    _check_top_level(doc, "pipeline")
    check_uuid(doc.get("uuid"), "pipeline 'uuid'")
    check_uuid(doc.get("name"), "pipeline 'name'")
    check_json(doc, "pipeline")
    return doc


def check_document(doc: Any) -> dict:
    """Return ``doc`` if it is a storable linked document with a ``uuid``, else ValueError."""
    if not isinstance(doc, dict):
        raise ValueError(f"document must be a dict, got {type(doc).__name__}")
    _check_top_level(doc, "document")
    check_uuid(doc.get("uuid"), "document 'uuid'")
    check_json(doc, "document")
    return doc


def check_query(state: Any, pipeline_uuid: Any, limit: Any) -> None:
    """Raise ValueError for a bad ``list_jobs`` filter or limit."""
    for name, value in (("state", state), ("pipeline_uuid", pipeline_uuid)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} filter must be a string or None, got {value!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")


def check_delete(force: Any, only_if_revision: Any) -> None:
    """Raise ValueError for bad ``delete_job`` options."""
    if not isinstance(force, bool):
        raise ValueError(f"force must be True or False, got {force!r}")
    if only_if_revision is not None and (not isinstance(only_if_revision, int)
                                         or isinstance(only_if_revision, bool)):
        raise ValueError(f"only_if_revision must be an integer or None, got {only_if_revision!r}")


def unlink(doc: dict, uuid: str) -> bool:
    """Remove ``uuid`` from the linkage fields of ``doc`` in place; True when it changed."""
    changed = False
    for field in LINKAGE_FIELDS:
        value = doc.get(field)
        if isinstance(value, list) and uuid in value:
            doc[field] = [v for v in value if v != uuid]
            changed = True
        elif value == uuid:  # a single reference kept as a scalar: drop the field
            del doc[field]
            changed = True
    return changed


# --- the SQLite backend ------------------------------------------------------------------------

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        uuid TEXT PRIMARY KEY, state TEXT NOT NULL, revision INTEGER NOT NULL,
        visible INTEGER NOT NULL, pipeline_uuid TEXT, created TEXT NOT NULL, body TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created DESC, uuid)",
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created DESC)",
    "CREATE INDEX IF NOT EXISTS jobs_by_pipeline ON jobs (pipeline_uuid, created DESC)",
    """CREATE TABLE IF NOT EXISTS pipelines (
        uuid TEXT PRIMARY KEY, name TEXT NOT NULL, body TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS documents (
        collection TEXT NOT NULL, uuid TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (collection, uuid))""",
)

BUSY_TIMEOUT_S = 5.0  # sqlite's own wait for a lock, per attempt
LOCK_ATTEMPTS = 3  # attempts before a lock counts as persistent (StoreUnavailable)
_IN_CHUNK = 500  # uuids per IN (...) query: well under SQLite's bound-parameter limit


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def path_from_uri(uri: str) -> str:
    """The file path of ``sqlite:///path`` (``sqlite:////abs`` is absolute), else ValueError."""
    prefix = "sqlite:///"
    if not isinstance(uri, str) or not uri.startswith(prefix) or len(uri) == len(prefix):
        raise ValueError(f"SQLite store URI must look like sqlite:///path/to/file.db, got {uri!r}")
    return uri[len(prefix):]


class SqliteJobStore(JobStore):
    """Jobs, pipelines and linked documents in one SQLite file."""

    def __init__(self, uri: str, busy_timeout_s: float = BUSY_TIMEOUT_S,
                 lock_attempts: int = LOCK_ATTEMPTS):
        path = path_from_uri(uri)
        self.uri = uri
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._lock_attempts = lock_attempts
        # One connection per store, shared by the threads of this process under a lock; other
        # processes open their own connection and SQLite's file locks arbitrate between them.
        self._mutex = threading.RLock()
        if path != ":memory:":
            try:
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the directory of SQLite store {path}: {exc}") \
                    from None
        try:
            self._conn = sqlite3.connect(str(Path(path).expanduser()) if path != ":memory:"
                                         else path, timeout=busy_timeout_s,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {path}: {exc}") from None
        self._run(self._setup)

    # --- plumbing ------------------------------------------------------------------------------
    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk before we return, because the caller acks right after.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the connection, retrying lock timeouts; translate sqlite errors."""
        with self._mutex:
            for attempt in range(1, self._lock_attempts + 1):
                try:
                    return work(self._conn)
                except sqlite3.OperationalError as exc:
                    self._rollback()
                    if not _is_lock_error(exc):
                        raise StoreError(f"SQLite store {self.path}: {exc}") from None
                    if attempt == self._lock_attempts:
                        raise StoreUnavailable(
                            f"SQLite store {self.path} stayed locked by another writer through "
                            f"{attempt} waits of {self._busy_timeout_s:g} s") from None
                    time.sleep(0.05 * attempt)
                except sqlite3.ProgrammingError as exc:
                    raise StoreError(f"SQLite store {self.path} cannot be used: {exc}") from None
                except sqlite3.Error as exc:
                    self._rollback()
                    raise StoreError(f"SQLite store {self.path}: {exc}") from None
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the connection is already out of the transaction

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` inside one ``BEGIN IMMEDIATE`` transaction (the cross-process lock)."""
        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                self._rollback()
                raise
            conn.execute("COMMIT")
            return result

        return self._run(transaction)

    def _read_one(self, sql: str, params: tuple) -> dict | None:
        row = self._run(lambda conn: conn.execute(sql, params).fetchone())
        return json.loads(row[0]) if row else None

    # --- jobs ----------------------------------------------------------------------------------
    def create_job(self, record: dict) -> tuple[dict, bool]:
        """Insert ``record`` unless a job with its uuid exists; return (stored record, created)."""
        record = check_job_record(record)
        body = _dumps(record)

        def insert(conn: sqlite3.Connection) -> tuple[dict, bool]:
            cur = conn.execute(
                "INSERT INTO jobs (uuid, state, revision, visible, pipeline_uuid, created, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uuid) DO NOTHING",
                (record["uuid"], record["state"], record["revision"], int(record["_visible"]),
                 record["pipeline_uuid"], record["created"], body))
            if cur.rowcount == 1:
                return json.loads(body), True
            row = conn.execute("SELECT body FROM jobs WHERE uuid = ?",
                               (record["uuid"],)).fetchone()
            return json.loads(row[0]), False

        return self._write(insert)

    def get_job(self, uuid: str, include_hidden: bool = False) -> dict | None:
        """The job with ``uuid`` (soft-deleted ones only when asked), or None."""
        check_uuid(uuid, "job uuid")
        visible = "" if include_hidden else " AND visible = 1"
        sql = "SELECT body FROM jobs WHERE uuid = ?" + visible
        return self._read_one(sql, (uuid,))

    def list_jobs(self, state: str | None = None, pipeline_uuid: str | None = None,
                  limit: int = 100, include_hidden: bool = False) -> list[dict]:
        """Jobs, newest first (then by uuid), optionally filtered by state and pipeline."""
        check_query(state, pipeline_uuid, limit)
        clauses, params = [], []
        if not include_hidden:
            clauses.append("visible = 1")
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        if pipeline_uuid is not None:
            clauses.append("pipeline_uuid = ?")
            params.append(pipeline_uuid)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        sql = f"SELECT body FROM jobs{where} ORDER BY created DESC, uuid ASC LIMIT ?"
        rows = self._run(lambda conn: conn.execute(sql, (*params, limit)).fetchall())
        return [json.loads(row[0]) for row in rows]

    def commit_event(self, uuid: str, from_state: str, to_state: str, entry: dict) -> dict | None:
        """One compare-and-set: visible job in ``from_state`` → ``to_state``, ``entry`` appended."""
        check_uuid(uuid, "job uuid")
        check_uuid(from_state, "from_state")
        check_uuid(to_state, "to_state")
        entry = json.loads(_dumps(check_entry(entry)))
        key = entry.get("key")

        def compare_and_set(conn: sqlite3.Connection) -> dict | None:
            row = conn.execute("SELECT body FROM jobs WHERE uuid = ? AND visible = 1 AND state = ?",
                               (uuid, from_state)).fetchone()
            if row is None:
                return None
            record = json.loads(row[0])
            if key is not None and any(h.get("key") == key for h in record.get("history", ())):
                return None
            record.update(state=to_state, last_event=entry["name"], updated=entry["date"],
                          revision=record.get("revision", 0) + 1)
            record.setdefault("history", []).append(entry)
            conn.execute("UPDATE jobs SET state = ?, revision = ?, body = ? WHERE uuid = ?",
                         (to_state, record["revision"], _dumps(record), uuid))
            return record

        return self._write(compare_and_set)

    def commit_events(self, changes: Iterable[tuple[str, str, str, dict]]) -> list[dict | None]:
        """Group commit: ``commit_event`` for each change (distinct jobs), in ONE transaction.

        Each change keeps its own compare-and-set (state and duplicate key checked inside the
        transaction); one that misses is None and the others still commit. The batch pays one
        lock and one fsync instead of one per change. Malformed input refuses the whole batch
        before anything is written.
        """
        batch = [(uuid, from_state, to_state, json.loads(_dumps(entry)))
                 for uuid, from_state, to_state, entry in check_changes(changes)]
        if not batch:
            return []

        def compare_and_set_all(conn: sqlite3.Connection) -> list[dict | None]:
            bodies: dict[str, str] = {}
            uuids = [change[0] for change in batch]
            for start in range(0, len(uuids), _IN_CHUNK):
                chunk = uuids[start:start + _IN_CHUNK]
                marks = ", ".join("?" * len(chunk))
                rows = conn.execute(f"SELECT uuid, body FROM jobs WHERE visible = 1 AND uuid IN "
                                    f"({marks})", chunk).fetchall()
                bodies.update(rows)
            results: list[dict | None] = []
            updates = []
            for uuid, from_state, to_state, entry in batch:
                body = bodies.get(uuid)
                record = json.loads(body) if body is not None else None
                key = entry.get("key")
                if record is None or record.get("state") != from_state or (
                        key is not None and any(h.get("key") == key
                                                for h in record.get("history", ()))):
                    results.append(None)
                    continue
                record.update(state=to_state, last_event=entry["name"], updated=entry["date"],
                              revision=record.get("revision", 0) + 1)
                record.setdefault("history", []).append(entry)
                updates.append((to_state, record["revision"], _dumps(record), uuid))
                results.append(record)
            conn.executemany("UPDATE jobs SET state = ?, revision = ?, body = ? WHERE uuid = ?",
                             updates)
            return results

        return self._write(compare_and_set_all)

    def delete_job(self, uuid: str, force: bool = True,
                   only_if_revision: int | None = None) -> bool:
        """Hard-delete the job and unlink its uuid everywhere (``force``), or hide it."""
        check_uuid(uuid, "job uuid")
        check_delete(force, only_if_revision)

        def delete(conn: sqlite3.Connection) -> bool:
            sql = "SELECT revision, body FROM jobs WHERE uuid = ?" + \
                ("" if force else " AND visible = 1")
            row = conn.execute(sql, (uuid,)).fetchone()
            if row is None or (only_if_revision is not None and row[0] != only_if_revision):
                return False
            if not force:
                record = json.loads(row[1])
                record["_visible"] = False
                conn.execute("UPDATE jobs SET visible = 0, body = ? WHERE uuid = ?",
                             (_dumps(record), uuid))
                return True
            conn.execute("DELETE FROM jobs WHERE uuid = ?", (uuid,))
            self._unlink_everywhere(conn, uuid)
            return True

        return self._write(delete)

    @staticmethod
    def _unlink_everywhere(conn: sqlite3.Connection, uuid: str) -> None:
        # instr() narrows the scan to rows whose text mentions the uuid at all (spelled as JSON
        # spells it); unlink() then looks only at the linkage fields, so the uuid quoted
        # elsewhere (e.g. in data) stays.
        needle = _dumps(uuid)[1:-1]
        for table, key_columns in (("jobs", ("uuid",)), ("pipelines", ("uuid",)),
                                   ("documents", ("collection", "uuid"))):
            columns = ", ".join(key_columns)
            rows = conn.execute(f"SELECT {columns}, body FROM {table} WHERE instr(body, ?) > 0",
                                (needle,)).fetchall()
            for row in rows:
                doc = json.loads(row[-1])
                if unlink(doc, uuid):
                    where = " AND ".join(f"{c} = ?" for c in key_columns)
                    conn.execute(f"UPDATE {table} SET body = ? WHERE {where}",
                                 (_dumps(doc), *row[:-1]))

    # --- pipelines -----------------------------------------------------------------------------
    def add_pipeline(self, doc: dict) -> tuple[dict, bool]:
        """Register a pipeline ``{uuid, name, ...}`` unless its uuid exists; (stored, created)."""
        body = _dumps(check_pipeline(doc))

        def insert(conn: sqlite3.Connection) -> tuple[dict, bool]:
            cur = conn.execute("INSERT INTO pipelines (uuid, name, body) VALUES (?, ?, ?) "
                               "ON CONFLICT (uuid) DO NOTHING", (doc["uuid"], doc["name"], body))
            if cur.rowcount == 1:
                return json.loads(body), True
            row = conn.execute("SELECT body FROM pipelines WHERE uuid = ?",
                               (doc["uuid"],)).fetchone()
            return json.loads(row[0]), False

        return self._write(insert)

    def get_pipeline(self, uuid: str) -> dict | None:
        """The pipeline with ``uuid``, or None."""
        check_uuid(uuid, "pipeline uuid")
        return self._read_one("SELECT body FROM pipelines WHERE uuid = ?", (uuid,))

    def list_pipelines(self) -> list[dict]:
        """Every registered pipeline, by name (then uuid)."""
        rows = self._run(lambda conn: conn.execute(
            "SELECT body FROM pipelines ORDER BY name, uuid").fetchall())
        return [json.loads(row[0]) for row in rows]

    # --- other linked documents ----------------------------------------------------------------
    def put_document(self, collection: str, doc: dict) -> None:
        """Insert or replace a document (keyed by its ``uuid``) in another collection."""
        check_collection(collection)
        body = _dumps(check_document(doc))
        self._write(lambda conn: conn.execute(
            "INSERT INTO documents (collection, uuid, body) VALUES (?, ?, ?) "
            "ON CONFLICT (collection, uuid) DO UPDATE SET body = excluded.body",
            (collection, doc["uuid"], body)))

    def get_document(self, collection: str, uuid: str) -> dict | None:
        """A document of another collection, or None."""
        check_collection(collection)
        check_uuid(uuid, "document uuid")
        return self._read_one("SELECT body FROM documents WHERE collection = ? AND uuid = ?",
                              (collection, uuid))

    # --- lifecycle -----------------------------------------------------------------------------
    def ping(self) -> None:
        """Return if the file answers a query; raise StoreUnavailable otherwise."""
        try:
            self._run(lambda conn: conn.execute("SELECT 1").fetchone())
        except StoreUnavailable:
            raise
        except StoreError as exc:
            raise StoreUnavailable(str(exc)) from None

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._mutex:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SqliteJobStore({self.path!r})"
