"""The layout of a SQLite store file (schema version 2, ``PRAGMA user_version``) and reading it.

Table ``jobs`` holds one row per job, its record as created *without* ``history`` as JSON text
(``body``) beside the columns queries need; the fields a state change moves (state, revision,
visibility, last_event, updated) live in columns, which a read lays over the parsed body. Table
``history`` holds one row per entry (job uuid, duplicate key, the entry's JSON) in append order
(``seq``), with a unique index on (job uuid, key). So an event costs the same whatever the job's
history: one conditional UPDATE of the job's columns and one INSERT, never a rewrite of the
record.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterable

from .base import archive_query

SCHEMA_VERSION = 2  # PRAGMA user_version of the layout below; 0 is the first layout

ARCHIVE_PATH = "json_extract(body, '$.archive_path')"


def jobs_table(name: str) -> str:
    """The CREATE TABLE statement of a jobs table called ``name``."""
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
    jobs_table("jobs"),
    "CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created DESC, uuid)",
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created DESC)",
    "CREATE INDEX IF NOT EXISTS jobs_by_pipeline ON jobs (pipeline_uuid, created DESC)",
    # Whose archive is where (``archive_owners``, at every job created with an archive path).
    f"CREATE INDEX IF NOT EXISTS jobs_by_archive ON jobs ({ARCHIVE_PATH})",
    *HISTORY_SCHEMA,
    """CREATE TABLE IF NOT EXISTS pipelines (
        uuid TEXT PRIMARY KEY, name TEXT NOT NULL, body TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS documents (
        collection TEXT NOT NULL, uuid TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (collection, uuid))""",
)

_IN_CHUNK = 500  # uuids per IN (...) query: well under SQLite's bound-parameter limit

# What a read selects of a job row: the body and the columns laid over it (see job_of).
JOB = "body, state, revision, visible, last_event, updated"
SELECT_JOB = f"SELECT {JOB} FROM jobs WHERE uuid = ?"
_SELECT_HISTORY = "SELECT body FROM history WHERE job_uuid = ? ORDER BY seq"
INSERT_HISTORY = "INSERT INTO history (job_uuid, key, body) VALUES (?, ?, ?)"

# One encoder for every write: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dumps(value: Any) -> str:
    """``value`` as the JSON text every write stores (compact, UTF-8, no NaN)."""
    return _ENCODER.encode(value)


def job_of(row: tuple) -> dict:
    """A job record (without history) from a ``JOB`` row: the body with the columns over it."""
    record = json.loads(row[0])
    # Assigning to keys the body already has keeps the record's key order.
    record["state"] = row[1]
    record["revision"] = row[2]
    record["_visible"] = bool(row[3])
    if row[4] is not None:  # NULL: no event since a create whose record had no last_event
        record["last_event"] = row[4]
    record["updated"] = row[5]
    return record


def entries(bodies: Iterable[str]) -> list[dict]:
    """The history entries stored as the JSON texts ``bodies``."""
    # One parse of one JSON array is cheaper than a parse per entry.
    return json.loads("[" + ",".join(bodies) + "]")


def history(conn: sqlite3.Connection, uuid: str) -> list[dict]:
    """The history of job ``uuid``, in append order."""
    return entries(body for (body,) in conn.execute(_SELECT_HISTORY, (uuid,)))


def histories(conn: sqlite3.Connection, uuids: list[str]) -> dict[str, list[dict]]:
    """The history of each job in ``uuids`` (in append order), in few queries."""
    bodies: dict[str, list[str]] = {uuid: [] for uuid in uuids}
    for start in range(0, len(uuids), _IN_CHUNK):
        chunk = uuids[start:start + _IN_CHUNK]
        marks = ", ".join("?" * len(chunk))
        for uuid, body in conn.execute(f"SELECT job_uuid, body FROM history WHERE job_uuid IN "
                                       f"({marks}) ORDER BY seq", chunk):
            bodies[uuid].append(body)
    return {uuid: entries(texts) for uuid, texts in bodies.items()}


def load_job(conn: sqlite3.Connection, uuid: str, include_hidden: bool,
             with_history: bool) -> dict | None:
    """The job ``uuid`` (hidden ones if ``include_hidden``), its history if ``with_history``."""
    row = conn.execute(SELECT_JOB + ("" if include_hidden else " AND visible = 1"),
                       (uuid,)).fetchone()
    if row is None:
        return None
    record = job_of(row)
    if with_history:
        record["history"] = history(conn, uuid)
    return record


def archive_owners_query(path: str | list[str] | tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """The SELECT of ``JobStore.archive_owners`` and its parameters (see ``base.archive_query``)."""
    exact, prefixes = archive_query(path)
    marks = ", ".join("?" * len(exact))
    ranges = "".join(f" OR ({ARCHIVE_PATH} >= ? AND {ARCHIVE_PATH} < ?)"
                     for _ in prefixes)
    sql = (f"SELECT uuid, {ARCHIVE_PATH} FROM jobs WHERE ({ARCHIVE_PATH} IN ({marks})"
           f"{ranges}) AND typeof({ARCHIVE_PATH}) = 'text' ORDER BY uuid")
    params = (*exact, *(bound for prefix in prefixes
                        for bound in (prefix, _after_prefix(prefix))))
    return sql, params


def _after_prefix(prefix: str) -> str:
    """The least text greater than everything that starts with ``prefix`` (ending in "/")."""
    return prefix[:-1] + "0"
