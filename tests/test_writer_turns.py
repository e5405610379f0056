"""Writers of one SQLite file take turns through a lock file beside it (``WriterTurns``)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from reactor.domain import records
from reactor.domain.identifiers import pipeline_uuid
from reactor.store.sqlite import SqliteJobStore
from reactor.store.writer_turns import WriterTurns

T1 = "2024-01-01T00:00:01.000Z"


def _job(store: SqliteJobStore, n: int = 0) -> str:
    p = pipeline_uuid("turns")
    store.add_pipeline({"uuid": p, "name": "turns"})
    record = records.new_job_record(uuid=f"107{n:05x}-0000-5000-8000-000000000000",
                                    pipeline_uuid=p, data={"n": n}, date=T1)
    return store.create_job(record)[0]["uuid"]


def test_a_turn_is_held_by_one_writer_at_a_time(tmp_path):
    db = tmp_path / "reactor.db"
    first, second = WriterTurns(db, wait_s=0.05), WriterTurns(db, wait_s=0.05)
    assert first.take()
    assert not second.take()  # waited its 50 ms, then gave up
    first.give_back()
    assert second.take()
    assert not first.take()
    second.close()  # closing ends a turn still held
    assert first.take()
    first.close()
    assert Path(f"{db}.writers").exists()


def test_a_process_that_dies_holding_its_turn_lets_go_of_it(tmp_path):
    db = tmp_path / "reactor.db"
    code = ("import os, sys; from reactor.store.writer_turns import WriterTurns; "
            f"assert WriterTurns({str(db)!r}, 1.0).take(); os._exit(9)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    turns = WriterTurns(db, wait_s=0.05)
    assert turns.take()
    turns.close()


def test_without_a_usable_lock_file_writers_rely_on_sqlite_alone(tmp_path):
    turns = WriterTurns(tmp_path / "no such directory" / "reactor.db", wait_s=0.05)
    assert not turns.take()
    turns.give_back()  # nothing held: nothing to do, no error
    turns.close()


def test_a_store_write_waits_for_the_turn_of_another_process(sqlite_uri, tmp_path):
    store = SqliteJobStore(sqlite_uri)
    uuid = _job(store)
    other = WriterTurns(store.path, wait_s=0.05)  # another process, as far as flock goes
    assert other.take()
    done = threading.Event()
    results = []

    def write() -> None:
        results.append(store.commit_event(uuid, "CREATED", "RUNNING",
                                          records.history_entry("run", {}, T1, "k1")))
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert not done.wait(0.3)  # the store waits for the turn (up to its busy timeout, 5 s)
    reader = SqliteJobStore(sqlite_uri)  # the waiting store's own reads queue behind its write
    assert reader.get_job(uuid, with_history=False)["state"] == "CREATED"
    reader.close()
    other.give_back()
    assert done.wait(10)
    writer.join()
    assert results[0]["state"] == "RUNNING"
    other.close()
    store.close()


def test_a_turn_never_given_back_costs_a_wait_not_the_write(sqlite_uri):
    """A writer stuck holding its turn (not SQLite's lock) delays the others by the store's
    busy timeout; then they go on under SQLite's own lock."""
    store = SqliteJobStore(sqlite_uri, busy_timeout_s=0.2)
    uuid = _job(store)
    stuck = WriterTurns(store.path, wait_s=0.05)
    assert stuck.take()
    result = store.commit_event(uuid, "CREATED", "RUNNING",
                                records.history_entry("run", {}, T1, "k1"))
    assert result["state"] == "RUNNING" and result["revision"] == 2
    stuck.close()
    store.close()


def test_an_in_memory_store_takes_no_turns(tmp_path):
    store = SqliteJobStore("sqlite:///:memory:")
    uuid = _job(store)
    assert store.commit_event(uuid, "CREATED", "RUNNING",
                              records.history_entry("run", {}, T1))["state"] == "RUNNING"
    store.close()
    assert not any(name.endswith(".writers") for name in os.listdir(tmp_path))


@pytest.mark.parametrize("workers", [2])
def test_writers_in_several_processes_lose_nothing_while_taking_turns(sqlite_uri, workers):
    store = SqliteJobStore(sqlite_uri)
    uuids = [_job(store, n) for n in range(workers)]
    code = """
import sys
from reactor.domain import records
from reactor.store.sqlite import SqliteJobStore
store = SqliteJobStore(sys.argv[1])
for i in range(60):
    key = f"{sys.argv[2]}-{i}"
    batch = [(u, "CREATED", "CREATED", records.history_entry("update", {"i": i}, "%s", key))
             for u in sys.argv[3:]]
    assert all(r is not None for r in store.commit_events(batch, with_history=False))
store.close()
""" % T1
    procs = [subprocess.Popen([sys.executable, "-c", code, sqlite_uri, f"w{w}", *uuids])
             for w in range(workers)]
    assert [p.wait(timeout=120) for p in procs] == [0] * workers
    for uuid in uuids:
        record = store.get_job(uuid)
        keys = [h.get("key") for h in record["history"][1:]]
        assert record["revision"] == 1 + 60 * workers
        assert sorted(keys) == sorted(f"w{w}-{i}" for w in range(workers) for i in range(60))
    store.close()
