"""The embedded store converts a file of its first layout (schema version 0) at open.

Version 0 kept each job as one JSON text, history included, in ``jobs.body``. The fixture below
writes such a file with raw sqlite3 exactly as that code did (its schema text copied verbatim),
so these tests do not depend on the current code to make their input.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from reactor.domain import records
from reactor.domain.errors import StoreError
from reactor.domain.identifiers import job_uuid, pipeline_uuid
from reactor.store import open_store

PIPELINE = pipeline_uuid("migration-tests")

# The schema of version 0, as reactor/store/sqlite.py had it (git show HEAD before version 2).
V0_SCHEMA = (
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


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class V0Writer:
    """Writes a version-0 file the way version-0 code did: same pragmas, statements, bodies."""

    def __init__(self, path: Path):
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("BEGIN IMMEDIATE")
        for statement in V0_SCHEMA:
            self.conn.execute(statement)
        self.conn.execute("COMMIT")

    def create(self, record: dict) -> dict:
        record = {**record, "_visible": record.get("_visible", True)}
        self.conn.execute(
            "INSERT INTO jobs (uuid, state, revision, visible, pipeline_uuid, created, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uuid) DO NOTHING",
            (record["uuid"], record["state"], record["revision"], int(record["_visible"]),
             record["pipeline_uuid"], record["created"], _dumps(record)))
        return json.loads(_dumps(record))

    def commit(self, uuid: str, from_state: str, to_state: str, entry: dict) -> dict:
        entry = json.loads(_dumps(entry))
        (body,) = self.conn.execute("SELECT body FROM jobs WHERE uuid = ? AND visible = 1 AND "
                                    "state = ?", (uuid, from_state)).fetchone()
        record = json.loads(body)
        record.update(state=to_state, last_event=entry["name"], updated=entry["date"],
                      revision=record.get("revision", 0) + 1)
        record.setdefault("history", []).append(entry)
        self.conn.execute("UPDATE jobs SET state = ?, revision = ?, body = ? WHERE uuid = ?",
                          (to_state, record["revision"], _dumps(record), uuid))
        return record

    def hide(self, uuid: str) -> dict:
        (body,) = self.conn.execute("SELECT body FROM jobs WHERE uuid = ?", (uuid,)).fetchone()
        record = json.loads(body)
        record["_visible"] = False
        self.conn.execute("UPDATE jobs SET visible = 0, body = ? WHERE uuid = ?",
                          (_dumps(record), uuid))
        return record

    def put(self, table: str, *values) -> None:
        marks = ", ".join("?" * len(values))
        self.conn.execute(f"INSERT INTO {table} VALUES ({marks})", values)

    def close(self) -> None:
        self.conn.close()


def _date(n: int) -> str:
    return f"2024-03-01T00:{n // 60:02d}:{n % 60:02d}.000Z"


def _record(n: int, **fields) -> dict:
    return records.new_job_record(uuid=job_uuid(PIPELINE, [], {"n": n}), pipeline_uuid=PIPELINE,
                                  data={"n": n, "text": "é✓"}, date=_date(n), **fields)


@pytest.fixture
def old_file(tmp_path):
    """A version-0 file with jobs at various points of their lives, plus other tables; returns
    (path, the records as version-0 code returned them, the rows of the other tables)."""
    path = tmp_path / "old.db"
    old = V0Writer(path)
    expected = {}
    fresh = old.create(_record(1))
    expected[fresh["uuid"]] = fresh
    busy = old.create(_record(2, child_of=[fresh["uuid"]]))
    steps = [("CREATED", "RUNNING", "run"), ("RUNNING", "RUNNING", "update"),
             ("RUNNING", "FINISHED", "finish")]
    for n, (src, dst, name) in enumerate(steps):
        e = records.history_entry(name, {"step": n, "$odd.key": [1, None]}, _date(10 + n),
                                  key=f"msg-{n}" if n != 1 else None)
        busy = old.commit(busy["uuid"], src, dst, e)
    expected[busy["uuid"]] = busy
    hidden = old.create(_record(3))
    hidden = old.commit(hidden["uuid"], "CREATED", "RUNNING",
                        records.history_entry("run", None, _date(20), key="h-1"))
    hidden = old.hide(hidden["uuid"])
    expected[hidden["uuid"]] = hidden
    long = old.create(_record(4))
    for n in range(40):
        long = old.commit(long["uuid"], "CREATED", "CREATED",
                          records.history_entry("update", {"n": n}, _date(30 + n), key=f"l-{n}"))
    expected[long["uuid"]] = long
    old.put("pipelines", PIPELINE, "migration", _dumps({"uuid": PIPELINE, "name": "migration"}))
    old.put("documents", "files", "105-a", _dumps({"uuid": "105-a", "child_of": [fresh["uuid"]]}))
    old.conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    old.put("notes", 1, "a table the reactor never made")
    old.close()
    return path, expected, _others(path)


def _others(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall()
                for t in ("pipelines", "documents", "notes")}
    finally:
        conn.close()


def _raw(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_an_old_file_is_converted_at_open(old_file):
    path, expected, others = old_file
    assert _raw(path, "PRAGMA user_version") == [(0,)]
    with open_store(f"sqlite:///{path}") as store:
        for uuid, record in expected.items():
            assert store.get_job(uuid, include_hidden=True) == record
            assert store.get_job(uuid, include_hidden=True, with_history=False) == {
                k: v for k, v in record.items() if k != "history"}
        visible = sorted((r for r in expected.values() if r["_visible"]),
                         key=lambda r: r["uuid"])
        visible.sort(key=lambda r: r["created"], reverse=True)
        assert store.list_jobs() == visible
        assert len(store.list_jobs(include_hidden=True)) == 4
        assert [j["uuid"] for j in store.list_jobs(state="FINISHED")] == [
            r["uuid"] for r in expected.values() if r["state"] == "FINISHED"]
        assert store.get_pipeline(PIPELINE) == {"uuid": PIPELINE, "name": "migration"}
    assert _raw(path, "PRAGMA user_version") == [(2,)]
    assert _raw(path, "SELECT count(*) FROM history") == [
        (sum(len(r["history"]) for r in expected.values()),)]
    assert _others(path) == others  # other tables, the reactor's and not, are untouched
    indexes = {name for (name,) in _raw(path, "SELECT name FROM sqlite_master WHERE "
                                              "type = 'index' AND name NOT LIKE 'sqlite_%'")}
    assert indexes == {"jobs_by_created", "jobs_by_state", "jobs_by_pipeline", "jobs_by_archive",
                       "history_by_key"}


def test_a_converted_file_takes_events_and_knows_its_old_keys(old_file):
    path, expected, _ = old_file
    busy = next(r for r in expected.values() if r["state"] == "FINISHED")
    long = next(r for r in expected.values() if len(r["history"]) == 41)
    with open_store(f"sqlite:///{path}") as store:
        # keys committed by version-0 code still stop a second application
        assert store.commit_event(busy["uuid"], "FINISHED", "FINISHED",
                                  records.history_entry("finish", None, _date(90), "msg-0")) is None
        assert store.commit_event(long["uuid"], "CREATED", "CREATED",
                                  records.history_entry("update", None, _date(90), "l-0")) is None
        e = records.history_entry("validate", {"ok": True}, _date(91), key="new")
        after = store.commit_event(busy["uuid"], "FINISHED", "VALIDATING", e)
        assert after["history"] == busy["history"] + [e]
        assert after["revision"] == busy["revision"] + 1 and after["last_event"] == "validate"
        assert store.get_job(busy["uuid"]) == after
        light = store.commit_event(long["uuid"], "CREATED", "RUNNING",
                                   records.history_entry("run", None, _date(92), key="l-40"),
                                   with_history=False)
        assert light["revision"] == 42 and "history" not in light
        assert store.delete_job(long["uuid"]) is True
    assert _raw(path, f"SELECT count(*) FROM history WHERE job_uuid = '{long['uuid']}'") == [(0,)]


def test_conversion_is_idempotent(old_file):
    path, expected, others = old_file
    dump = "SELECT * FROM jobs ORDER BY uuid"
    with open_store(f"sqlite:///{path}") as store:
        first = store.list_jobs(include_hidden=True)
    jobs_rows, history_rows = _raw(path, dump), _raw(path, "SELECT * FROM history ORDER BY seq")
    for _ in range(2):
        with open_store(f"sqlite:///{path}") as store:
            assert store.list_jobs(include_hidden=True) == first
        assert _raw(path, dump) == jobs_rows
        assert _raw(path, "SELECT * FROM history ORDER BY seq") == history_rows
        assert _raw(path, "PRAGMA user_version") == [(2,)]
    assert _others(path) == others


def test_stores_opening_an_old_file_at_once_convert_it_once(old_file):
    path, expected, _ = old_file
    results, errors = [], []

    def open_and_read() -> None:
        try:
            with open_store(f"sqlite:///{path}") as store:
                results.append(store.list_jobs(include_hidden=True))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_and_read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 4 and all(r == results[0] for r in results)
    assert _raw(path, "SELECT count(*) FROM history") == [
        (sum(len(r["history"]) for r in expected.values()),)]


def test_an_old_job_with_a_key_twice_converts_and_keeps_both_entries(tmp_path):
    # version-0 create_job accepted such a record; the history keeps it as it was
    path = tmp_path / "twice.db"
    old = V0Writer(path)
    record = _record(7)
    twice = [records.history_entry("update", {"n": n}, _date(n), key="same") for n in range(2)]
    stored = old.create({**record, "history": record["history"] + twice, "revision": 3})
    old.close()
    with open_store(f"sqlite:///{path}") as store:
        assert store.get_job(record["uuid"]) == stored
        assert store.commit_event(record["uuid"], "CREATED", "CREATED",
                                  records.history_entry("update", None, _date(5), "same")) is None


def test_an_empty_old_schema_converts(tmp_path):
    path = tmp_path / "empty-v0.db"
    V0Writer(path).close()
    with open_store(f"sqlite:///{path}") as store:
        assert store.list_jobs() == []
        assert store.create_job(_record(8))[1] is True
    assert _raw(path, "PRAGMA user_version") == [(2,)]


def test_an_empty_file_becomes_version_2(tmp_path):
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    with open_store(f"sqlite:///{path}") as store:
        store.create_job(_record(9))
    assert _raw(path, "PRAGMA user_version") == [(2,)]
    assert _raw(path, "SELECT count(*) FROM history") == [(1,)]


@pytest.mark.parametrize("version, message", [
    (3, r"schema version 3, newer than version 2.*newer reactor"),
    (99, r"schema version 99, newer than version 2"),
    (1, r"schema version 1, which no reactor wrote"),
])
def test_a_file_of_another_version_is_refused_and_left_as_it_was(tmp_path, version, message):
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE jobs (uuid TEXT PRIMARY KEY, anything TEXT)")
    conn.execute("INSERT INTO jobs VALUES ('107-x', 'from the future')")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=message):
        open_store(f"sqlite:///{path}")
    assert path.read_bytes() == before
    assert _raw(path, "PRAGMA journal_mode") == [("delete",)]  # not even switched to WAL


def test_an_old_body_that_is_not_json_refuses_the_conversion_whole(old_file):
    path, expected, _ = old_file
    conn = sqlite3.connect(path)
    conn.execute("UPDATE jobs SET body = '{not json' WHERE uuid = ?", (next(iter(expected)),))
    conn.commit()
    conn.close()
    before = _raw(path, "SELECT * FROM jobs ORDER BY uuid")
    with pytest.raises(StoreError, match=f"cannot convert job {next(iter(expected))}"):
        open_store(f"sqlite:///{path}")
    assert _raw(path, "PRAGMA user_version") == [(0,)]
    assert _raw(path, "SELECT * FROM jobs ORDER BY uuid") == before
    assert _raw(path, "SELECT name FROM sqlite_master WHERE name IN ('history', 'jobs_v2')") == []


def test_a_foreign_jobs_table_is_refused(tmp_path):
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, title TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="table 'jobs' with columns"):
        open_store(f"sqlite:///{path}")
    assert _raw(path, "PRAGMA user_version") == [(0,)]
