"""Group commit at the store: ``commit_events`` and ``commit_waves`` against ``commit_event`` on
twin jobs, on both backends: a batch gives exactly what one-by-one commits give."""
from __future__ import annotations

import sqlite3

import pymongo
import pytest

from twin_helpers import GHOST, T1, entry, same_shape, twins
from reactor.domain import records
from reactor.domain.errors import StoreUnavailable
from reactor.domain.identifiers import typed_uuid
from reactor.store import open_store
from reactor.store.sqlite import SqliteJobStore


def conflicting_changes(jobs, side: list[str]) -> list[tuple[str, str, str, dict]]:
    """Changes for jobs 0..4 of one side: two that match, a stale state, a repeated key, a
    hidden job, plus one for a job that does not exist."""
    store = jobs.store
    store.commit_event(side[2], "CREATED", "CREATED", entry("update", key="seen"))
    store.delete_job(side[3], force=False)
    return [
        (side[0], "CREATED", "RUNNING", entry("run", key="k0")),
        (side[1], "CREATED", "CREATED", entry("update")),
        (side[4], "RUNNING", "FINISHED", entry("finish", key="k4")),    # stale from_state
        (side[2], "CREATED", "CREATED", entry("update", key="seen")),   # repeated key
        (side[3], "CREATED", "RUNNING", entry("run", key="k3")),        # hidden job
        (GHOST, "CREATED", "RUNNING", entry("run")),                    # no such job
    ]


def test_a_batch_gives_exactly_the_one_by_one_results(jobs):
    a, b = twins(jobs, 5)
    changes_a, changes_b = conflicting_changes(jobs, a), conflicting_changes(jobs, b)
    one_by_one = [jobs.store.commit_event(*change) for change in changes_a]
    batch = jobs.store.commit_events(changes_b)
    assert [r is not None for r in batch] == [True, True, False, False, False, False]
    assert [same_shape(r, c[0]) for r, c in zip(batch, changes_b)] == \
        [same_shape(r, c[0]) for r, c in zip(one_by_one, changes_a)]
    for x, y in zip(a, b):
        assert same_shape(jobs.store.get_job(y, include_hidden=True), y) == \
            same_shape(jobs.store.get_job(x, include_hidden=True), x)
    # what the batch returned is what the store now holds
    assert batch[0] == jobs.store.get_job(b[0]) and batch[1] == jobs.store.get_job(b[1])
    assert batch[0]["history"][-1]["key"] == "k0" and batch[0]["revision"] == 2


def test_a_missed_change_is_applied_by_the_one_by_one_fallback(jobs):
    (uuid,), _ = twins(jobs, 1)
    token = jobs.authority.job_token(uuid)
    jobs.apply(uuid, "run", token=token)  # another writer moved the job: CREATED → RUNNING
    stale = jobs.plan(uuid, "update", {"x": 1}, token, "msg-1", "CREATED")
    assert jobs.commit_waves([[stale]]) == [[None]]
    result = jobs.apply(uuid, "update", {"x": 1}, token=token, key="msg-1")
    assert result.applied and result.from_state == "RUNNING"
    # and a change whose key was applied meanwhile falls back to a duplicate, not a 2nd entry
    again = jobs.plan(uuid, "update", {"x": 1}, token, "msg-1", "RUNNING")
    assert jobs.commit_waves([[again]]) == [[None]]
    assert jobs.apply(uuid, "update", {"x": 1}, token=token, key="msg-1").duplicate
    assert [h.get("key") for h in jobs.get(uuid)["history"]] == [None, None, "msg-1"]


def test_a_batch_spanning_several_statement_chunks_gives_the_one_by_one_results(
        sqlite_uri, authority, monkeypatch):
    """SQLite commits a batch with a few set-wide statements per chunk of changes: misses of
    every kind in every chunk, and a chunk with nothing left to write, change nothing else."""
    from reactor.domain.identifiers import pipeline_uuid
    from reactor.engine.jobs import Jobs

    jobs = Jobs(SqliteJobStore(sqlite_uri), authority)
    jobs.pipeline_uuid = pipeline_uuid("test-pipeline")
    jobs.store.add_pipeline({"uuid": jobs.pipeline_uuid, "name": "test-pipeline"})
    monkeypatch.setattr("reactor.store.sqlite._SET_CHUNK", 4)
    a, b = twins(jobs, 10)
    changes = {}
    for side in (a, b):
        side_changes = conflicting_changes(jobs, side)  # 6 changes: 2 applied, 4 missed
        jobs.store.commit_event(side[5], "CREATED", "CREATED", entry("update", key="again"))
        side_changes += [
            (side[5], "CREATED", "CREATED", entry("update", key="again")),   # repeated key
            (side[6], "CREATED", "RUNNING", entry("run")),                   # no key at all
            (side[7], "RUNNING", "RUNNING", entry("update", key="k7")),      # stale from_state
            (side[8], "CREATED", "RUNNING", entry("run", key="k8")),
            (side[9], "CREATED", "CREATED", entry("update", key="k9")),
        ]
        changes[side[0]] = side_changes
    one_by_one = [jobs.store.commit_event(*change) for change in changes[a[0]]]
    batch = jobs.store.commit_events(changes[b[0]])
    assert [r is not None for r in batch] == [True, True, False, False, False, False,
                                              False, True, False, True, True]
    assert [same_shape(r, c[0]) for r, c in zip(batch, changes[b[0]])] == \
        [same_shape(r, c[0]) for r, c in zip(one_by_one, changes[a[0]])]
    for x, y in zip(a, b):
        assert same_shape(jobs.store.get_job(y, include_hidden=True), y) == \
            same_shape(jobs.store.get_job(x, include_hidden=True), x)
    light = jobs.store.commit_events([(u, "RUNNING", "RUNNING", entry("update", key="z"))
                                      for u in (b[0], b[6], b[8])], with_history=False)
    assert [r["revision"] for r in light] == [3, 3, 3] and all("history" not in r for r in light)
    jobs.store.close()


def test_waves_apply_in_order_and_a_miss_stops_the_job_s_later_changes(jobs, monkeypatch):
    (a, b, c), _ = twins(jobs, 3)
    jobs.store.commit_event(c, "CREATED", "RUNNING", entry("run", key="elsewhere"))
    writes = []
    if isinstance(jobs.store, SqliteJobStore):  # the point of waves: one write for them all
        inner = jobs.store._write
        monkeypatch.setattr(jobs.store, "_write", lambda work: writes.append(1) or inner(work))
    results = jobs.store.commit_waves([
        [(a, "CREATED", "RUNNING", entry("run", key="a1")),
         (b, "CREATED", "CREATED", entry("update", key="seen")),
         (c, "CREATED", "RUNNING", entry("run", key="c1"))],        # misses: c is RUNNING
        [(a, "RUNNING", "RUNNING", entry("update", key="a2")),
         (b, "CREATED", "RUNNING", entry("run", key="b2")),
         (c, "RUNNING", "RUNNING", entry("update", key="c2"))],     # would match: not tried
        [(a, "RUNNING", "FINISHED", entry("finish", key="a3"))],
    ], with_history=False)
    assert [[r is not None for r in wave] for wave in results] == \
        [[True, True, False], [True, True, False], [True]]
    assert [r["revision"] for r in results[0][:2] + results[1][:2] + results[2]] == [2, 2, 3, 3, 4]
    assert [h.get("key") for h in jobs.get(a)["history"]] == [None, "a1", "a2", "a3"]
    assert [h.get("key") for h in jobs.get(c)["history"]] == [None, "elsewhere"]
    assert jobs.get(a)["state"] == "FINISHED" and jobs.get(b)["state"] == "RUNNING"
    assert writes in ([], [1])  # SQLite: one transaction for all three waves
    assert len(writes) == (1 if isinstance(jobs.store, SqliteJobStore) else 0)
    assert jobs.store.commit_waves([]) == [] and jobs.store.commit_waves([[], []]) == [[], []]


def test_a_bad_change_in_any_wave_refuses_every_wave(jobs):
    (a, b), _ = twins(jobs, 2)
    before = jobs.store.list_jobs(limit=100, include_hidden=True)
    with pytest.raises(ValueError, match="wave 1: change 0: history entry 'date' must be"):
        jobs.store.commit_waves([[(a, "CREATED", "RUNNING", entry("run"))],
                                 [(b, "CREATED", "RUNNING", {"name": "run", "date": "now"})]])
    with pytest.raises(ValueError, match="wave 0: change 1: job .* already has change 0"):
        jobs.store.commit_waves([[(a, "CREATED", "RUNNING", entry("run")),
                                  (a, "RUNNING", "RUNNING", entry("update"))]])
    with pytest.raises(ValueError, match="waves must be a sequence"):
        jobs.store.commit_waves(7)
    assert jobs.store.list_jobs(limit=100, include_hidden=True) == before


def test_an_empty_batch_touches_nothing(store):
    assert store.commit_events([]) == []


@pytest.mark.parametrize("bad, message", [
    (lambda u: (u, "CREATED", "RUNNING", {"name": "run", "date": "yesterday"}),
     "change 1: history entry 'date' must be a UTC timestamp"),
    (lambda u: (u, "", "RUNNING", entry("run")), "change 1: from_state must be a non-empty"),
    (lambda u: (u, "CREATED"), r"change 1 must be \(uuid, from_state, to_state, entry\)"),
    (lambda u: (u, "CREATED", "RUNNING", entry("run", data={"x": float("nan")})),
     "change 1: history entry"),
    (lambda u: (u, "CREATED", "RUNNING", {"name": "run", "date": T1, "key": 5}),
     "change 1: history entry 'key' must be a string"),
])
def test_a_bad_change_refuses_the_batch_before_anything_is_written(jobs, bad, message):
    a, _ = twins(jobs, 2)
    before = jobs.store.list_jobs(limit=100, include_hidden=True)
    with pytest.raises(ValueError, match=message):
        jobs.store.commit_events([(a[0], "CREATED", "RUNNING", entry("run")), bad(a[1])])
    assert jobs.store.list_jobs(limit=100, include_hidden=True) == before


def test_two_changes_for_one_job_in_one_batch_are_refused(jobs):
    (uuid,), _ = twins(jobs, 1)
    before = jobs.get(uuid)
    with pytest.raises(ValueError, match="already has change 0 in this batch"):
        jobs.store.commit_events([(uuid, "CREATED", "RUNNING", entry("run")),
                                  (uuid, "RUNNING", "RUNNING", entry("update"))])
    assert jobs.get(uuid) == before
    with pytest.raises(ValueError, match="changes must be a sequence"):
        jobs.store.commit_events(42)


def test_mongo_job_documents_are_keyed_by_uuid(mongo_store_uri):
    """New documents keep ``_id`` = uuid, the layout the release before reads by."""
    store = open_store(mongo_store_uri)
    client = pymongo.MongoClient(mongo_store_uri, serverSelectionTimeoutMS=3000)
    try:
        record = records.new_job_record(uuid=typed_uuid("pipelinejob", "keyed"),
                                        pipeline_uuid=typed_uuid("pipeline", "p"), data={},
                                        date=T1)
        store.create_job(record)
        raw = client.get_default_database()["jobs"].find_one({"uuid": record["uuid"]})
        assert raw["_id"] == record["uuid"]
        assert store.get_job(record["uuid"]) == record  # _id never shows
    finally:
        client.close()
        store.close()



def test_store_unavailable_is_not_swallowed_by_the_store_layer(sqlite_uri):
    store = SqliteJobStore(sqlite_uri, busy_timeout_s=0.05, lock_attempts=1)
    other = sqlite3.connect(sqlite_uri[len("sqlite:///"):], isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable, match="stayed locked"):
            store.commit_events([(GHOST, "CREATED", "RUNNING", entry("run"))])
    finally:
        other.execute("ROLLBACK")
        other.close()
        store.close()

