"""Converting a SQLite store file of the first layout (version 0) to the current one, at open.

Version 0 kept whole records, history included, in ``jobs.body``. The conversion runs inside
the opening store's write transaction, so it happens whole or not at all; other tables are not
touched. It is apart from ``sqlite`` because a file is converted once and read ever after.
"""
from __future__ import annotations

import json
import sqlite3

from ..domain.errors import StoreError
from .sqlite_schema import HISTORY_SCHEMA, INSERT_HISTORY, SCHEMA_VERSION, dumps, jobs_table

# The jobs table of version 0, whose body held the whole record, history included.
V0_JOB_COLUMNS = ("uuid", "state", "revision", "visible", "pipeline_uuid", "created", "body")
_MIGRATE_CHUNK = 500  # version-0 jobs converted per batch of inserts


def convert_from_v0(conn: sqlite3.Connection, path: str) -> None:
    """Convert the version-0 jobs table of store ``path``, if there is one (a new file has none)."""
    columns = _table_columns(conn, "jobs")
    if not columns or "updated" in columns:
        return  # a new file, or tables of this layout without their version number
    if set(V0_JOB_COLUMNS) - set(columns):
        raise StoreError(f"SQLite store {path} has a table 'jobs' with columns "
                         f"{columns}, which no reactor wrote")
    try:
        _migrate_from_v0(conn)
    except StoreError as exc:
        raise StoreError(f"SQLite store {path} (schema version 0) cannot be converted "
                         f"to version {SCHEMA_VERSION}, so nothing was changed: {exc}") \
            from None


def _migrate_from_v0(conn: sqlite3.Connection) -> None:
    """Convert a version-0 ``jobs`` table (whole records in ``body``) to the current layout."""
    conn.execute(jobs_table("jobs_v2"))
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
                              record["updated"], dumps(record)))
            keys: set[str] = set()
            for entry in history:
                key = entry.get("key")
                if not isinstance(key, str) or key in keys:
                    # The entry keeps its key in its body; the first entry with a key is
                    # the one the duplicate check finds.
                    key = None
                else:
                    keys.add(key)
                history_rows.append((uuid, key, dumps(entry)))
        conn.executemany("INSERT INTO jobs_v2 (uuid, state, revision, visible, pipeline_uuid, "
                         "created, last_event, updated, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         jobs_rows)
        conn.executemany(INSERT_HISTORY, history_rows)
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
