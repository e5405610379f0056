"""Embedded store: one SQLite file (stdlib ``sqlite3``), safe for several processes at once.

``SqliteJobStore`` is the ``JobStore`` over one file: its operations, each one statement or one
transaction, and the compare-and-set of the hot path. The layout of the file (schema version 2:
job rows, with history rows in their own table) is ``sqlite_schema``; the connection, its
transactions and the retry of lock timeouts are ``sqlite_file``; a file of the first layout
(version 0: whole records, history included) is converted at open, in one transaction, by
``sqlite_migrate``.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Callable, Iterable, TypeVar

from ..domain.errors import StoreError, StoreUnavailable
from .base import JobStore, apply_in_waves
from .checks import (
    check_changes, check_collection, check_delete, check_document, check_flag, check_job_record,
    check_pipeline, check_query, check_state_change, check_uuid, check_waves, unlink,
)
from .sqlite_file import SqliteFile
from .sqlite_schema import (
    INSERT_HISTORY, JOB, archive_owners_query, dumps, entries, histories, history, job_of,
    load_job,
)

T = TypeVar("T")

BUSY_TIMEOUT_S = 5.0  # sqlite's own wait for a lock, per attempt
LOCK_ATTEMPTS = 3  # attempts before a lock counts as persistent (StoreUnavailable)

_HAS_KEY = "SELECT 1 FROM history WHERE job_uuid = ? AND key = ?"
# The compare-and-set: the state change in place, the record's fields back in the same step.
_CAS = ("UPDATE jobs SET state = ?, revision = revision + 1, last_event = ?, updated = ? "
        f"WHERE uuid = ? AND visible = 1 AND state = ? RETURNING {JOB}")

# The compare-and-set of several jobs in one statement. Each row of ``rows`` is (uuid,
# from_state, to_state, event name, date); RETURNING gives each changed job's uuid and fields.
_CAS_MANY = ("UPDATE jobs SET state = v.column3, revision = revision + 1, last_event = v.column4, "
             "updated = v.column5 FROM (VALUES {rows}) AS v WHERE jobs.uuid = v.column1 AND "
             "jobs.visible = 1 AND jobs.state = v.column2 RETURNING uuid, " + JOB)
# Changes per set-wide statement: at 5 parameters each, under the 999 parameters per statement
# that SQLite builds before 3.32 allow.
_SET_CHUNK = 150


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
    conn.execute(INSERT_HISTORY, (uuid, key, text))
    record = job_of(rows[0])
    if with_history:
        record["history"] = history(conn, uuid)
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
            results[uuid] = job_of(changed[uuid])
    if with_history and results:
        for uuid, found in histories(conn, list(results)).items():
            results[uuid]["history"] = found
    return [results.get(change[0]) for change in batch]


def _rows(rows: int, columns: int) -> str:
    """``(?, ?), (?, ?), …``: the placeholders of ``rows`` rows of ``columns`` values."""
    row = "(" + ", ".join("?" * columns) + ")"
    return ", ".join([row] * rows)


def path_from_uri(uri: str) -> str:
    """The file path of ``sqlite:///path`` (``sqlite:////abs`` is absolute), else ValueError."""
    prefix = "sqlite:///"
    if not isinstance(uri, str) or not uri.startswith(prefix) or len(uri) == len(prefix):
        raise ValueError(f"SQLite store URI must look like sqlite:///path/to/file.db, got {uri!r}")
    return uri[len(prefix):]


def _list_query(state: str | None, pipeline_uuid: str | None,
                include_hidden: bool) -> tuple[str, list[str]]:
    """The SELECT of ``list_jobs`` (its last parameter, the limit, still to be bound)."""
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
    return f"SELECT uuid, {JOB} FROM jobs{where} ORDER BY created DESC, uuid ASC LIMIT ?", params


def _delete(conn: sqlite3.Connection, uuid: str, force: bool,
            only_if_revision: int | None) -> bool:
    """``delete_job`` inside the caller's write transaction."""
    if not force:
        row = conn.execute(f"SELECT revision, {JOB} FROM jobs WHERE uuid = ? AND "
                           "visible = 1", (uuid,)).fetchone()
        if row is None or (only_if_revision is not None and row[0] != only_if_revision):
            return False
        # The body is rewritten as the record now is (hidden), columns included.
        record = job_of(row[1:])
        record["_visible"] = False
        conn.execute("UPDATE jobs SET visible = 0, body = ? WHERE uuid = ?",
                     (dumps(record), uuid))
        return True
    row = conn.execute("SELECT revision FROM jobs WHERE uuid = ?", (uuid,)).fetchone()
    if row is None or (only_if_revision is not None and row[0] != only_if_revision):
        return False
    conn.execute("DELETE FROM history WHERE job_uuid = ?", (uuid,))
    conn.execute("DELETE FROM jobs WHERE uuid = ?", (uuid,))
    _unlink_everywhere(conn, uuid)
    return True


def _unlink_everywhere(conn: sqlite3.Connection, uuid: str) -> None:
    # instr() narrows the scan to rows whose text mentions the uuid at all (spelled as JSON
    # spells it); unlink() then looks only at the linkage fields, so the uuid quoted
    # elsewhere (e.g. in data) stays. History rows hold no linkage fields: never scanned.
    needle = dumps(uuid)[1:-1]
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
                             (dumps(doc), *row[:-1]))


class SqliteJobStore(JobStore):
    """Jobs, pipelines and linked documents in one SQLite file."""

    def __init__(self, uri: str, busy_timeout_s: float = BUSY_TIMEOUT_S,
                 lock_attempts: int = LOCK_ATTEMPTS):
        path = path_from_uri(uri)
        self.uri = uri
        self.path = path
        self._file = SqliteFile(path, busy_timeout_s, lock_attempts)

    # --- plumbing ------------------------------------------------------------------------------
    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one write transaction, in this process's turn (``SqliteFile.write``)."""
        return self._file.write(work)

    def _read_one(self, sql: str, params: tuple) -> dict | None:
        row = self._file.run(lambda conn: conn.execute(sql, params).fetchone())
        return json.loads(row[0]) if row else None

    # --- jobs ----------------------------------------------------------------------------------
    def create_job(self, record: dict) -> tuple[dict, bool]:
        """Insert ``record`` unless a job with its uuid exists; return (stored record, created)."""
        record = check_job_record(record)
        uuid = record["uuid"]
        body = dumps({k: v for k, v in record.items() if k != "history"})
        rows = [(uuid, entry.get("key"), dumps(entry)) for entry in record["history"]]
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
                return load_job(conn, uuid, include_hidden=True, with_history=True), False
            conn.executemany(INSERT_HISTORY, rows)
            stored = json.loads(body)
            stored["history"] = entries(text for _, _, text in rows)
            return stored, True

        return self._write(insert)

    def get_job(self, uuid: str, include_hidden: bool = False,
                with_history: bool = True) -> dict | None:
        """The job with ``uuid`` (soft-deleted ones only when asked), or None; without its
        ``history`` (and without reading it) when ``with_history`` is False."""
        check_uuid(uuid, "job uuid")
        check_flag(with_history, "with_history")
        if not with_history:  # one statement: a snapshot by itself
            return self._file.run(lambda conn: load_job(conn, uuid, include_hidden, False))
        return self._file.read(lambda conn: load_job(conn, uuid, include_hidden, True))

    def list_jobs(self, state: str | None = None, pipeline_uuid: str | None = None,
                  limit: int = 100, include_hidden: bool = False) -> list[dict]:
        """Jobs, newest first (then by uuid), optionally filtered by state and pipeline."""
        check_query(state, pipeline_uuid, limit)
        sql, params = _list_query(state, pipeline_uuid, include_hidden)

        def read(conn: sqlite3.Connection) -> list[dict]:
            rows = conn.execute(sql, (*params, limit)).fetchall()
            found = histories(conn, [row[0] for row in rows])
            records = []
            for row in rows:
                record = job_of(row[1:])
                record["history"] = found[row[0]]
                records.append(record)
            return records

        return self._file.read(read)

    def commit_event(self, uuid: str, from_state: str, to_state: str, entry: dict,
                     with_history: bool = True) -> dict | None:
        """One compare-and-set: visible job in ``from_state`` → ``to_state``, ``entry`` appended.

        In one transaction: the duplicate-key check on the history's unique index, a
        conditional UPDATE of the job's columns, one INSERT of the entry. The record's body is
        never rewritten, so the cost does not grow with the history.
        """
        check_state_change(uuid, from_state, to_state, entry)
        check_flag(with_history, "with_history")
        text = dumps(entry)
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
        texts = [[(*change, dumps(change[3])) for change in wave] for wave in waves]
        if not any(texts):
            return [[] for _ in texts]
        return self._write(lambda conn: apply_in_waves(
            texts, lambda todo: _compare_and_set_many(conn, todo, with_history)))

    def delete_job(self, uuid: str, force: bool = True,
                   only_if_revision: int | None = None) -> bool:
        """Hard-delete the job, its history and its uuid everywhere (``force``), or hide it."""
        check_uuid(uuid, "job uuid")
        check_delete(force, only_if_revision)
        return self._write(lambda conn: _delete(conn, uuid, force, only_if_revision))

    def archive_owners(self, path: str | list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
        """``(uuid, archive_path)`` of every job (hidden ones too) whose archive path is
        ``path`` (or one of a list), below it or one of its ancestors, by uuid (see
        ``base.archive_query``).

        Each path is one lookup in the ``jobs_by_archive`` index: equal to one of ``exact``,
        or in the range of text that starts with a prefix (each ends in "/", and "0" is the
        character after "/", so ``[prefix, prefix[:-1] + "0")`` is exactly what starts with
        it; no LIKE, so no wildcard to escape)."""
        sql, params = archive_owners_query(path)
        rows = self._file.run(lambda conn: conn.execute(sql, params).fetchall())
        return [(uuid, p) for uuid, p in rows]

    # --- pipelines -----------------------------------------------------------------------------
    def add_pipeline(self, doc: dict) -> tuple[dict, bool]:
        """Register a pipeline ``{uuid, name, ...}`` unless its uuid exists; (stored, created)."""
        body = dumps(check_pipeline(doc))

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
        rows = self._file.run(lambda conn: conn.execute(
            "SELECT body FROM pipelines ORDER BY name, uuid").fetchall())
        return [json.loads(row[0]) for row in rows]

    # --- other linked documents ----------------------------------------------------------------
    def put_document(self, collection: str, doc: dict) -> None:
        """Insert or replace a document (keyed by its ``uuid``) in another collection."""
        check_collection(collection)
        body = dumps(check_document(doc))
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
            self._file.run(lambda conn: conn.execute("SELECT 1").fetchone())
        except StoreUnavailable:
            raise
        except StoreError as exc:
            raise StoreUnavailable(str(exc)) from None

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._file.close()

    def __repr__(self) -> str:
        return f"SqliteJobStore({self.path!r})"
