"""Embedded store: one SQLite file (stdlib ``sqlite3``), safe for several processes at once.

Every write runs in a ``BEGIN IMMEDIATE`` transaction, so the read-check-write of a
compare-and-set is atomic across processes (the reactor's writers first take turns through a
lock file, ``writer_turns``, so none sleeps in SQLite's busy handler); WAL mode lets readers
proceed while one writer holds the lock, and a read of several rows runs in one read
transaction (one snapshot).

Layout (schema version 2, ``PRAGMA user_version``): table ``jobs`` holds one row per job, its
record as created *without* ``history`` as JSON text (``body``) beside the columns queries need;
the fields a state change moves (state, revision, visibility, last_event, updated) live in
columns, which a read lays over the parsed body. Table ``history`` holds one row per entry (job
uuid, duplicate key, the entry's JSON) in append order (``seq``), with a unique index on (job
uuid, key). So an event costs the same whatever the job's history: one conditional UPDATE of
the job's columns and one INSERT, never a rewrite of the record. A file of the first layout
(version 0: whole records, history included, in ``jobs.body``) is converted at open, in one
transaction.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from ..domain.errors import StoreError, StoreUnavailable
from .base import JobStore, apply_in_waves, archive_query
from .writer_turns import WriterTurns
from .checks import (
    check_changes, check_collection, check_delete, check_document, check_flag, check_job_record,
    check_pipeline, check_query, check_state_change, check_uuid, check_waves, unlink,
)

T = TypeVar("T")

# --- the SQLite backend ------------------------------------------------------------------------

SCHEMA_VERSION = 2  # PRAGMA user_version of the layout below; 0 is the first layout


_ARCHIVE_PATH = "json_extract(body, '$.archive_path')"


def _after_prefix(prefix: str) -> str:
    """The least text greater than everything that starts with ``prefix`` (ending in "/")."""
    return prefix[:-1] + "0"


def _jobs_table(name: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {name} (
        uuid TEXT PRIMARY KEY, state TEXT NOT NULL, revision INTEGER NOT NULL,
        visible INTEGER NOT NULL, pipeline_uuid TEXT, created TEXT NOT NULL, last_event TEXT,
        updated TEXT NOT NULL, body TEXT NOT NULL)"""


HISTORY_SCHEMA = (
    # seq is the rowid, declared so that VACUUM keeps it: it is the append order. A new row's
    # rowid exceeds every existing one, so each job's entries stay in the order appended.
    """CREATE TABLE IF NOT EXISTS history (
        seq INTEGER PRIMARY KEY, job_uuid TEXT NOT NULL, key TEXT, body TEXT NOT NULL)""",
    # The duplicate-key check; SQLite treats NULLs as distinct, so entries without a key pass.
    "CREATE UNIQUE INDEX IF NOT EXISTS history_by_key ON history (job_uuid, key)",
)
SCHEMA = (
    _jobs_table("jobs"),
    "CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created DESC, uuid)",
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created DESC)",
    "CREATE INDEX IF NOT EXISTS jobs_by_pipeline ON jobs (pipeline_uuid, created DESC)",
    # Whose archive is where (``archive_owners``, at every job created with an archive path).
    f"CREATE INDEX IF NOT EXISTS jobs_by_archive ON jobs ({_ARCHIVE_PATH})",
    *HISTORY_SCHEMA,
    """CREATE TABLE IF NOT EXISTS pipelines (
        uuid TEXT PRIMARY KEY, name TEXT NOT NULL, body TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS documents (
        collection TEXT NOT NULL, uuid TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (collection, uuid))""",
)
# The jobs table of version 0, whose body held the whole record, history included.
V0_JOB_COLUMNS = ("uuid", "state", "revision", "visible", "pipeline_uuid", "created", "body")

BUSY_TIMEOUT_S = 5.0  # sqlite's own wait for a lock, per attempt
LOCK_ATTEMPTS = 3  # attempts before a lock counts as persistent (StoreUnavailable)
_IN_CHUNK = 500  # uuids per IN (...) query: well under SQLite's bound-parameter limit
_MIGRATE_CHUNK = 500  # version-0 jobs converted per batch of inserts

# What a read selects of a job row: the body and the columns laid over it (see _job).
_JOB = "body, state, revision, visible, last_event, updated"
_SELECT_JOB = f"SELECT {_JOB} FROM jobs WHERE uuid = ?"
_SELECT_HISTORY = "SELECT body FROM history WHERE job_uuid = ? ORDER BY seq"
_INSERT_HISTORY = "INSERT INTO history (job_uuid, key, body) VALUES (?, ?, ?)"
_HAS_KEY = "SELECT 1 FROM history WHERE job_uuid = ? AND key = ?"
# The compare-and-set: the state change in place, the record's fields back in the same step.
_CAS = ("UPDATE jobs SET state = ?, revision = revision + 1, last_event = ?, updated = ? "
        f"WHERE uuid = ? AND visible = 1 AND state = ? RETURNING {_JOB}")

# The compare-and-set of several jobs in one statement. Each row of ``rows`` is (uuid,
# from_state, to_state, event name, date); RETURNING gives each changed job's uuid and fields.
_CAS_MANY = ("UPDATE jobs SET state = v.column3, revision = revision + 1, last_event = v.column4, "
             "updated = v.column5 FROM (VALUES {rows}) AS v WHERE jobs.uuid = v.column1 AND "
             "jobs.visible = 1 AND jobs.state = v.column2 RETURNING uuid, " + _JOB)
# Changes per set-wide statement: at 5 parameters each, under the 999 parameters per statement
# that SQLite builds before 3.32 allow.
_SET_CHUNK = 150

# One encoder for every write: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def _job(row: tuple) -> dict:
    """A job record (without history) from a ``_JOB`` row: the body with the columns over it."""
    record = json.loads(row[0])
    # Assigning to keys the body already has keeps the record's key order.
    record["state"] = row[1]
    record["revision"] = row[2]
    record["_visible"] = bool(row[3])
    if row[4] is not None:  # NULL: no event since a create whose record had no last_event
        record["last_event"] = row[4]
    record["updated"] = row[5]
    return record


def _entries(bodies: Iterable[str]) -> list[dict]:
    # One parse of one JSON array is cheaper than a parse per entry.
    return json.loads("[" + ",".join(bodies) + "]")


def _history(conn: sqlite3.Connection, uuid: str) -> list[dict]:
    return _entries(body for (body,) in conn.execute(_SELECT_HISTORY, (uuid,)))


def _histories(conn: sqlite3.Connection, uuids: list[str]) -> dict[str, list[dict]]:
    """The history of each job in ``uuids`` (in append order), in few queries."""
    bodies: dict[str, list[str]] = {uuid: [] for uuid in uuids}
    for start in range(0, len(uuids), _IN_CHUNK):
        chunk = uuids[start:start + _IN_CHUNK]
        marks = ", ".join("?" * len(chunk))
        for uuid, body in conn.execute(f"SELECT job_uuid, body FROM history WHERE job_uuid IN "
                                       f"({marks}) ORDER BY seq", chunk):
            bodies[uuid].append(body)
    return {uuid: _entries(texts) for uuid, texts in bodies.items()}


def _compare_and_set(conn: sqlite3.Connection, uuid: str, from_state: str, to_state: str,
                     entry: dict, text: str, with_history: bool) -> dict | None:
    """One state change inside the caller's write transaction; None (nothing written) on a miss.

    ``text`` is ``entry`` serialised, written as is: the entry is never copied or re-read.
    """
    key = entry.get("key")
    if key is not None and conn.execute(_HAS_KEY, (uuid, key)).fetchone() is not None:
        return None
    # fetchall: the statement runs to completion, so nothing is left pending at COMMIT.
    rows = conn.execute(_CAS, (to_state, entry["name"], entry["date"], uuid,
                               from_state)).fetchall()
    if not rows:
        return None
    conn.execute(_INSERT_HISTORY, (uuid, key, text))
    record = _job(rows[0])
    if with_history:
        record["history"] = _history(conn, uuid)
    return record


def _compare_and_set_many(conn: sqlite3.Connection,
                          batch: list[tuple[str, str, str, dict, str]],
                          with_history: bool) -> list[dict | None]:
    """``_compare_and_set`` of every change in ``batch`` (distinct jobs) inside the caller's
    write transaction, with three statements per chunk of changes instead of three per change;
    None (nothing written) where a change missed.

    SQLite gives up the interpreter lock while it runs a statement, and in a consumer the other
    thread may then keep it for a while: a statement per chunk, not per row, keeps the writer
    (and the file's write lock) from waiting behind that thread row after row.
    """
    if len(batch) == 1:  # set-wide statements cost more than they save for one change
        uuid, from_state, to_state, entry, text = batch[0]
        return [_compare_and_set(conn, uuid, from_state, to_state, entry, text, with_history)]
    results: dict[str, dict] = {}
    for start in range(0, len(batch), _SET_CHUNK):
        chunk = batch[start:start + _SET_CHUNK]
        keyed = [(uuid, entry["key"]) for uuid, _f, _t, entry, _x in chunk
                 if entry.get("key") is not None]
        seen: set[str] = set()
        if keyed:
            seen = {uuid for (uuid,) in conn.execute(
                f"SELECT h.job_uuid FROM (VALUES {_rows(len(keyed), 2)}) AS v "
                "JOIN history AS h ON h.job_uuid = v.column1 AND h.key = v.column2",
                [value for pair in keyed for value in pair])}
        todo = [change for change in chunk if change[0] not in seen]
        if not todo:
            continue
        # fetchall: the statement runs to completion, so nothing is left pending at COMMIT.
        changed = {row[0]: row[1:] for row in conn.execute(
            _CAS_MANY.format(rows=_rows(len(todo), 5)),
            [value for uuid, from_state, to_state, entry, _x in todo
             for value in (uuid, from_state, to_state, entry["name"], entry["date"])]
        ).fetchall()}
        written = [change for change in todo if change[0] in changed]
        if written:
            conn.execute(f"INSERT INTO history (job_uuid, key, body) VALUES "
                         f"{_rows(len(written), 3)}",
                         [value for uuid, _f, _t, entry, text in written
                          for value in (uuid, entry.get("key"), text)])
        for uuid, *_rest in written:
            results[uuid] = _job(changed[uuid])
    if with_history and results:
        for uuid, history in _histories(conn, list(results)).items():
            results[uuid]["history"] = history
    return [results.get(change[0]) for change in batch]


def _rows(rows: int, columns: int) -> str:
    """``(?, ?), (?, ?), …``: the placeholders of ``rows`` rows of ``columns`` values."""
    row = "(" + ", ".join("?" * columns) + ")"
    return ", ".join([row] * rows)


def _migrate_from_v0(conn: sqlite3.Connection) -> None:
    """Convert a version-0 ``jobs`` table (whole records in ``body``) to the current layout.

    Runs inside the caller's write transaction, so the conversion happens whole or not at all.
    Other tables are not touched.
    """
    conn.execute(_jobs_table("jobs_v2"))
    for statement in HISTORY_SCHEMA:
        conn.execute(statement)
    read = conn.execute(f"SELECT {', '.join(V0_JOB_COLUMNS)} FROM jobs ORDER BY rowid")
    while True:
        rows = read.fetchmany(_MIGRATE_CHUNK)
        if not rows:
            break
        jobs_rows, history_rows = [], []
        for uuid, state, revision, visible, pipeline, created, body in rows:
            record, history = _split_v0(uuid, body)
            last_event = record.get("last_event")
            jobs_rows.append((uuid, state, revision, visible, pipeline, created,
                              last_event if isinstance(last_event, str) else None,
                              record["updated"], _dumps(record)))
            keys: set[str] = set()
            for entry in history:
                key = entry.get("key")
                if not isinstance(key, str) or key in keys:
                    # The entry keeps its key in its body; the first entry with a key is
                    # the one the duplicate check finds.
                    key = None
                else:
                    keys.add(key)
                history_rows.append((uuid, key, _dumps(entry)))
        conn.executemany("INSERT INTO jobs_v2 (uuid, state, revision, visible, pipeline_uuid, "
                         "created, last_event, updated, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         jobs_rows)
        conn.executemany(_INSERT_HISTORY, history_rows)
    read.close()
    conn.execute("DROP TABLE jobs")  # its indexes go with it; SCHEMA makes them anew
    conn.execute("ALTER TABLE jobs_v2 RENAME TO jobs")


def _split_v0(uuid: str, body: str) -> tuple[dict, list[dict]]:
    """A version-0 body as (record without history, history); StoreError if it is unusable."""
    try:
        record = json.loads(body)
    except ValueError as exc:
        raise StoreError(f"cannot convert job {uuid}: its stored body is not JSON ({exc})") \
            from None
    history = record.pop("history", []) if isinstance(record, dict) else None
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history) or \
            not isinstance(record.get("updated"), str):
        raise StoreError(f"cannot convert job {uuid}: its stored body is not a job record "
                         "with an 'updated' timestamp and a list of history entries")
    return record, history


def _table_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


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
        file = None if path == ":memory:" else Path(path).expanduser()
        # Only files have writers in other processes to take turns with.
        self._turns = None if file is None else WriterTurns(file, busy_timeout_s)
        if file is not None:
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the directory of SQLite store {path}: {exc}") \
                    from None
        try:
            self._conn = sqlite3.connect(path if file is None else str(file),
                                         timeout=busy_timeout_s,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {path}: {exc}") from None
        try:
            self._run(self._setup)
        except BaseException:
            self._conn.close()
            raise

    # --- plumbing ------------------------------------------------------------------------------
    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
        self._check_version(conn)  # before anything here changes the file
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk before we return, because the caller acks right after.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Again under the write lock: another process may have converted the file meanwhile.
            version = self._check_version(conn)
            if version == 0:
                self._convert_from_v0(conn)
            for statement in SCHEMA:
                conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _check_version(self, conn: sqlite3.Connection) -> int:
        """The file's schema version if this code reads it (0 is converted), else StoreError."""
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(f"SQLite store {self.path} has schema version {version}, newer than "
                             f"version {SCHEMA_VERSION}, the newest this reactor reads: it was "
                             "written by a newer reactor; use that one (nothing was changed)")
        if version not in (0, SCHEMA_VERSION):
            raise StoreError(f"SQLite store {self.path} has schema version {version}, which no "
                             f"reactor wrote; this one reads versions 0 and {SCHEMA_VERSION}")
        return version

    def _convert_from_v0(self, conn: sqlite3.Connection) -> None:
        """Convert a version-0 jobs table, if there is one (a new file has none)."""
        columns = _table_columns(conn, "jobs")
        if not columns or "updated" in columns:
            return  # a new file, or tables of this layout without their version number
        if set(V0_JOB_COLUMNS) - set(columns):
            raise StoreError(f"SQLite store {self.path} has a table 'jobs' with columns "
                             f"{columns}, which no reactor wrote")
        try:
            _migrate_from_v0(conn)
        except StoreError as exc:
            raise StoreError(f"SQLite store {self.path} (schema version 0) cannot be converted "
                             f"to version {SCHEMA_VERSION}, so nothing was changed: {exc}") \
                from None

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

    def _transaction(self, begin: str, work: Callable[[sqlite3.Connection], T]) -> T:
        return self._run(self._transaction_of(begin, work))

    def _transaction_of(self, begin: str, work: Callable[[sqlite3.Connection], T]
                        ) -> Callable[[sqlite3.Connection], T]:
        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute(begin)
            try:
                result = work(conn)
            except BaseException:
                self._rollback()
                raise
            conn.execute("COMMIT")
            return result

        return transaction

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` inside one ``BEGIN IMMEDIATE`` transaction (the cross-process lock),
        after waiting for this process's turn among the file's writers (``WriterTurns``)."""
        transaction = self._transaction_of("BEGIN IMMEDIATE", work)
        if self._turns is None:
            return self._run(transaction)

        def in_turn(conn: sqlite3.Connection) -> T:
            # Under the mutex (inside _run): the turn belongs to the process, not the thread.
            taken = self._turns.take()
            try:
                return transaction(conn)
            finally:
                if taken:
                    self._turns.give_back()

        return self._run(in_turn)

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work``'s several reads in one read transaction: one snapshot of the file."""
        return self._transaction("BEGIN", work)

    def _read_one(self, sql: str, params: tuple) -> dict | None:
        row = self._run(lambda conn: conn.execute(sql, params).fetchone())
        return json.loads(row[0]) if row else None

    @staticmethod
    def _load(conn: sqlite3.Connection, uuid: str, include_hidden: bool,
              with_history: bool) -> dict | None:
        row = conn.execute(_SELECT_JOB + ("" if include_hidden else " AND visible = 1"),
                           (uuid,)).fetchone()
        if row is None:
            return None
        record = _job(row)
        if with_history:
            record["history"] = _history(conn, uuid)
        return record

    # --- jobs ----------------------------------------------------------------------------------
    def create_job(self, record: dict) -> tuple[dict, bool]:
        """Insert ``record`` unless a job with its uuid exists; return (stored record, created)."""
        record = check_job_record(record)
        uuid = record["uuid"]
        body = _dumps({k: v for k, v in record.items() if k != "history"})
        entries = [(uuid, entry.get("key"), _dumps(entry)) for entry in record["history"]]
        last_event = record.get("last_event")

        def insert(conn: sqlite3.Connection) -> tuple[dict, bool]:
            cur = conn.execute(
                "INSERT INTO jobs (uuid, state, revision, visible, pipeline_uuid, created, "
                "last_event, updated, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (uuid) DO NOTHING",
                (uuid, record["state"], record["revision"], int(record["_visible"]),
                 record["pipeline_uuid"], record["created"],
                 last_event if isinstance(last_event, str) else None, record["updated"], body))
            if cur.rowcount != 1:
                return self._load(conn, uuid, include_hidden=True, with_history=True), False
            conn.executemany(_INSERT_HISTORY, entries)
            stored = json.loads(body)
            stored["history"] = _entries(text for _, _, text in entries)
            return stored, True

        return self._write(insert)

    def get_job(self, uuid: str, include_hidden: bool = False,
                with_history: bool = True) -> dict | None:
        """The job with ``uuid`` (soft-deleted ones only when asked), or None; without its
        ``history`` (and without reading it) when ``with_history`` is False."""
        check_uuid(uuid, "job uuid")
        check_flag(with_history, "with_history")
        if not with_history:  # one statement: a snapshot by itself
            return self._run(lambda conn: self._load(conn, uuid, include_hidden, False))
        return self._read(lambda conn: self._load(conn, uuid, include_hidden, True))

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
        sql = f"SELECT uuid, {_JOB} FROM jobs{where} ORDER BY created DESC, uuid ASC LIMIT ?"

        def read(conn: sqlite3.Connection) -> list[dict]:
            rows = conn.execute(sql, (*params, limit)).fetchall()
            histories = _histories(conn, [row[0] for row in rows])
            records = []
            for row in rows:
                record = _job(row[1:])
                record["history"] = histories[row[0]]
                records.append(record)
            return records

        return self._read(read)

    def commit_event(self, uuid: str, from_state: str, to_state: str, entry: dict,
                     with_history: bool = True) -> dict | None:
        """One compare-and-set: visible job in ``from_state`` → ``to_state``, ``entry`` appended.

        In one transaction: the duplicate-key check on the history's unique index, a
        conditional UPDATE of the job's columns, one INSERT of the entry. The record's body is
        never rewritten, so the cost does not grow with the history.
        """
        check_state_change(uuid, from_state, to_state, entry)
        check_flag(with_history, "with_history")
        text = _dumps(entry)
        return self._write(lambda conn: _compare_and_set(conn, uuid, from_state, to_state,
                                                         entry, text, with_history))

    def commit_events(self, changes: Iterable[tuple[str, str, str, dict]],
                      with_history: bool = True) -> list[dict | None]:
        """Group commit: ``commit_event`` for each change (distinct jobs), in ONE transaction.

        Each change keeps its own compare-and-set (state and duplicate key checked inside the
        transaction); one that misses is None and the others still commit. The batch pays one
        lock and one fsync instead of one per change. Malformed input refuses the whole batch
        before anything is written.
        """
        return self._commit_checked([check_changes(changes)], with_history)[0]

    def commit_waves(self, waves: Iterable[Iterable[tuple[str, str, str, dict]]],
                     with_history: bool = True) -> list[list[dict | None]]:
        """``commit_events`` of each wave in order, all in ONE transaction (one lock, one
        fsync); a change whose job missed in an earlier wave is not attempted (None).
        Malformed input refuses every wave before anything is written."""
        return self._commit_checked(check_waves(waves), with_history)

    def _commit_checked(self, waves: list[list[tuple[str, str, str, dict]]],
                        with_history: bool) -> list[list[dict | None]]:
        """Checked waves of changes in one write transaction (none for no change at all)."""
        check_flag(with_history, "with_history")
        texts = [[(*change, _dumps(change[3])) for change in wave] for wave in waves]
        if not any(texts):
            return [[] for _ in texts]
        return self._write(lambda conn: apply_in_waves(
            texts, lambda todo: _compare_and_set_many(conn, todo, with_history)))

    def delete_job(self, uuid: str, force: bool = True,
                   only_if_revision: int | None = None) -> bool:
        """Hard-delete the job, its history and its uuid everywhere (``force``), or hide it."""
        check_uuid(uuid, "job uuid")
        check_delete(force, only_if_revision)

        def delete(conn: sqlite3.Connection) -> bool:
            if not force:
                row = conn.execute(f"SELECT revision, {_JOB} FROM jobs WHERE uuid = ? AND "
                                   "visible = 1", (uuid,)).fetchone()
                if row is None or (only_if_revision is not None and row[0] != only_if_revision):
                    return False
                # The body is rewritten as the record now is (hidden), columns included.
                record = _job(row[1:])
                record["_visible"] = False
                conn.execute("UPDATE jobs SET visible = 0, body = ? WHERE uuid = ?",
                             (_dumps(record), uuid))
                return True
            row = conn.execute("SELECT revision FROM jobs WHERE uuid = ?", (uuid,)).fetchone()
            if row is None or (only_if_revision is not None and row[0] != only_if_revision):
                return False
            conn.execute("DELETE FROM history WHERE job_uuid = ?", (uuid,))
            conn.execute("DELETE FROM jobs WHERE uuid = ?", (uuid,))
            self._unlink_everywhere(conn, uuid)
            return True

        return self._write(delete)

    @staticmethod
    def _unlink_everywhere(conn: sqlite3.Connection, uuid: str) -> None:
        # instr() narrows the scan to rows whose text mentions the uuid at all (spelled as JSON
        # spells it); unlink() then looks only at the linkage fields, so the uuid quoted
        # elsewhere (e.g. in data) stays. History rows hold no linkage fields: never scanned.
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

    def archive_owners(self, path: str | list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
        """``(uuid, archive_path)`` of every job (hidden ones too) whose archive path is
        ``path`` (or one of a list), below it or one of its ancestors, by uuid (see
        ``base.archive_query``).

        Each path is one lookup in the ``jobs_by_archive`` index: equal to one of ``exact``,
        or in the range of text that starts with a prefix (each ends in "/", and "0" is the
        character after "/", so ``[prefix, prefix[:-1] + "0")`` is exactly what starts with
        it; no LIKE, so no wildcard to escape)."""
        exact, prefixes = archive_query(path)
        marks = ", ".join("?" * len(exact))
        ranges = "".join(f" OR ({_ARCHIVE_PATH} >= ? AND {_ARCHIVE_PATH} < ?)"
                         for _ in prefixes)
        sql = (f"SELECT uuid, {_ARCHIVE_PATH} FROM jobs WHERE ({_ARCHIVE_PATH} IN ({marks})"
               f"{ranges}) AND typeof({_ARCHIVE_PATH}) = 'text' ORDER BY uuid")
        params = (*exact, *(bound for prefix in prefixes
                            for bound in (prefix, _after_prefix(prefix))))
        rows = self._run(lambda conn: conn.execute(sql, params).fetchall())
        return [(uuid, p) for uuid, p in rows]

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
            if self._turns is not None:
                self._turns.close()

    def __repr__(self) -> str:
        return f"SqliteJobStore({self.path!r})"
