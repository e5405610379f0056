"""Batch commits when another writer changed the jobs since this store last saw them, and what a
batch costs on MongoDB (the documents it remembers spare it the read-back).

The stores answer alike: a batch gives what ``commit_event`` would have given at that moment,
whatever another store object (another process) did to the jobs before it: commits, hides,
deletes and re-creations, unlinks.
"""
from __future__ import annotations

from collections import Counter

import pytest
from pymongo import monitoring

from reactor.domain import records
from reactor.domain.identifiers import job_uuid, pipeline_uuid
from reactor.store import open_store
from reactor.store.mongo_batch import KnownJobs

PIPELINE = pipeline_uuid("batch-writer-tests")
T0, T1, T2 = "2024-01-01T00:00:00.000Z", "2024-01-01T00:00:01.000Z", "2024-01-02T00:00:00.000Z"


def job(n: int, date: str = T0, **fields) -> dict:
    """A fresh job record with a distinct uuid per ``n``."""
    uid = job_uuid(PIPELINE, [], {"n": n})
    return records.new_job_record(uuid=uid, pipeline_uuid=PIPELINE, data={"n": n}, date=date,
                                  **fields)


def entry(name: str = "update", key: str | None = None) -> dict:
    return records.history_entry(name, {"e": name}, T1, key)


def _keys(store, uuid: str) -> list:
    return [h.get("key") for h in store.get_job(uuid)["history"]]


@pytest.mark.parametrize("with_history", [False, True])
def test_a_batch_after_another_writer_gives_what_commit_event_would(store, store_uri,
                                                                   with_history):
    made = [job(n) for n in range(6)]
    linked = job(6)
    made[3] = job(3, child_of=[linked["uuid"]])
    for record in (*made, linked):
        store.create_job(record)  # this store has now seen every job
    u = [r["uuid"] for r in made]
    other = open_store(store_uri)
    try:
        other.commit_event(u[0], "CREATED", "CREATED", entry(key="b0"))  # same state, revision 2
        other.delete_job(u[1], force=False)                               # hidden
        other.delete_job(u[2])                                            # gone, then again:
        other.create_job({**job(2, date=T2), "data": {"n": 2, "again": True}})
        other.delete_job(linked["uuid"])                                  # unlinks job 3
        other.commit_event(u[5], "CREATED", "CREATED", entry(key="k5"))   # the batch's key
        results = store.commit_waves([
            [(u[n], "CREATED", "CREATED", entry(key=f"k{n}")) for n in range(6)],
            [(u[n], "CREATED", "RUNNING", entry("run", key=f"r{n}")) for n in (0, 3, 4)],
        ], with_history=with_history)
        first, second = results
        assert [r is not None for r in first] == [True, False, True, True, True, False]
        assert all(r is not None for r in second)
        assert [first[n]["revision"] for n in (0, 2, 3, 4)] == [3, 2, 2, 2]
        assert [r["revision"] for r in second] == [4, 3, 3]
        assert first[2]["data"] == {"n": 2, "again": True} and first[2]["created"] == T2
        assert first[3]["child_of"] == [] and second[1]["child_of"] == []
        for n, record in ((0, second[0]), (2, first[2]), (3, second[1]), (4, second[2])):
            assert record == other.get_job(u[n], with_history=with_history)
        assert _keys(other, u[0]) == [None, "b0", "k0", "r0"]
        assert _keys(other, u[5]) == [None, "k5"]
        assert other.get_job(u[1], include_hidden=True)["revision"] == 1
    finally:
        other.close()


def test_a_batch_for_a_job_gone_or_moved_meanwhile_misses_it(store, store_uri):
    made = [job(10 + n) for n in range(3)]
    for record in made:
        store.create_job(record)
    u = [r["uuid"] for r in made]
    other = open_store(store_uri)
    try:
        other.delete_job(u[0])
        other.commit_event(u[1], "CREATED", "RUNNING", entry("run"))
        results = store.commit_waves([
            [(uuid, "CREATED", "CREATED", entry(key="x")) for uuid in u],
            [(uuid, "CREATED", "RUNNING", entry("run", key="y")) for uuid in u],
        ], with_history=False)
        assert [[r is not None for r in wave] for wave in results] == [[False, False, True]] * 2
        assert other.get_job(u[1])["revision"] == 2 and _keys(other, u[1]) == [None, None]
        # what the store now remembers of the moved job is what it is
        again = store.commit_events([(u[1], "RUNNING", "RUNNING", entry(key="z"))],
                                    with_history=False)
        assert again == [other.get_job(u[1], with_history=False)]
    finally:
        other.close()


# --- MongoDB: the round trips of a batch -----------------------------------------------------

class CommandCounter(monitoring.CommandListener):
    """Counts the reads and writes one database receives while ``database`` is set."""

    COUNTED = {"find", "update", "findAndModify", "aggregate", "insert", "delete"}

    def __init__(self):
        self.database: str | None = None
        self.counts: Counter = Counter()

    def started(self, event) -> None:
        if event.database_name == self.database and event.command_name in self.COUNTED:
            self.counts[event.command_name] += 1

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


def test_mongo_a_batch_of_jobs_it_knows_is_one_write_and_no_read(mongo_store_uri):
    counter = CommandCounter()
    monitoring.register(counter)  # clients created from now on report to it
    store, other = open_store(mongo_store_uri), open_store(mongo_store_uri)
    try:
        mine = [store.create_job(job(20 + n))[0]["uuid"] for n in range(8)]
        theirs = [other.create_job(job(40 + n))[0]["uuid"] for n in range(4)]
        counter.database = store.database
        results = store.commit_waves([
            [(uuid, "CREATED", "RUNNING", entry("run", key=f"r{n}")) for n, uuid in
             enumerate(mine)],
            [(uuid, "RUNNING", "RUNNING", entry(key=f"u{n}")) for n, uuid in enumerate(mine)],
            [(uuid, "RUNNING", "FINISHED", entry("finish")) for uuid in mine[:4]],
        ], with_history=False)
        assert counter.counts == {"update": 1}
        assert [[r["revision"] for r in wave] for wave in results] == [[2] * 8, [3] * 8, [4] * 4]
        counter.database = None
        assert results[2] == [other.get_job(uuid, with_history=False) for uuid in mine[:4]]
        assert results[1][4:] == [other.get_job(uuid, with_history=False) for uuid in mine[4:]]

        counter.counts.clear()
        counter.database = store.database
        # jobs it has not seen: read once (no history), then the write
        strangers = store.commit_events([(uuid, "CREATED", "RUNNING", entry("run"))
                                         for uuid in theirs], with_history=False)
        assert counter.counts == {"find": 1, "update": 1}
        # a repeated key: the write, a read of which changes landed, a read of the job missed
        counter.counts.clear()
        mixed = store.commit_events([(mine[0], "FINISHED", "FINISHED", entry(key="u0")),
                                     (mine[1], "FINISHED", "FINISHED", entry(key="new"))],
                                    with_history=False)
        assert counter.counts == {"update": 1, "find": 2}
        counter.database = None
        assert strangers == [other.get_job(uuid, with_history=False) for uuid in theirs]
        assert mixed == [None, other.get_job(mine[1], with_history=False)]
        assert _keys(other, mine[0]).count("u0") == 1
    finally:
        counter.database = None
        store.close()
        other.close()


def test_mongo_remembered_jobs_are_bounded_in_count_and_bytes():
    def doc(n: int, pad: int = 0) -> dict:
        return {"uuid": f"job-{n}", "state": "CREATED", "revision": 1, "_visible": True,
                "data": {"pad": "x" * pad}, "history": [{"name": "create"}]}

    known = KnownJobs(size=3, max_bytes=10_000)
    for n in range(4):
        known.put(doc(n))
    assert known.get("job-0") is None  # the least recently used of four
    assert [known.get(f"job-{n}") is not None for n in (1, 2, 3)] == [True] * 3
    assert "history" not in known.get("job-3")
    known.put(doc(4, pad=6_000))
    assert known.get("job-1") is None and known.get("job-4") is not None
    known.put(doc(5, pad=6_000))  # with job 4 too many bytes: the older ones go, job 4 last
    assert [known.get(f"job-{n}") is not None for n in range(6)] == [False] * 5 + [True]
    known.put(doc(6, pad=20_000))  # more than all the bytes allowed: never kept
    assert known.get("job-6") is None and known.get("job-5") is not None
    known.put({**doc(5), "_visible": False})  # hidden: forgotten
    assert known.get("job-5") is None
