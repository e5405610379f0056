"""Several processes racing on one job through ``Jobs.apply``: no write is lost or doubled.

Runs against both backends: the SQLite file shared by every process, MongoDB over TCP.
"""
from __future__ import annotations

import multiprocessing

import pytest

from conftest import TEST_SECRET

PROCESSES = 8
EVENTS_EACH = 50
SHARED_KEYS = 20

pytestmark = pytest.mark.timeout(600)


def _apply_updates(store_uri: str, uuid: str, worker: int, count: int, keyed: bool) -> None:
    """Child process: apply ``count`` reflexive updates to job ``uuid`` with its token."""
    from reactor.jobs import Jobs
    from reactor.store import open_store
    from reactor.tokens import Authority

    authority = Authority(TEST_SECRET)
    with open_store(store_uri) as store:
        jobs = Jobs(store, authority)
        token = authority.job_token(uuid)
        for n in range(count):
            # keyed: every worker sends the same keys, as redelivered copies of one message would
            key = f"shared-{n}" if keyed else None
            jobs.apply(uuid, "update", {"worker": worker, "n": n}, token=token, key=key)


def _race(store_uri: str, uuid: str, count: int, keyed: bool) -> None:
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_apply_updates, args=(store_uri, uuid, w, count, keyed))
               for w in range(PROCESSES)]
    for p in workers:
        p.start()
    for p in workers:
        p.join()
    assert [p.exitcode for p in workers] == [0] * PROCESSES


def test_concurrent_updates_lose_nothing(jobs, store, store_uri):
    record, created = jobs.create(jobs.pipeline_uuid, data={"race": "updates"})
    assert created

    _race(store_uri, record["uuid"], EVENTS_EACH, keyed=False)

    final = store.get_job(record["uuid"])
    updates = [h for h in final["history"] if h["name"] == "update"]
    assert len(updates) == PROCESSES * EVENTS_EACH
    assert [h["name"] for h in final["history"]][0] == "create"
    assert len(final["history"]) == PROCESSES * EVENTS_EACH + 1
    assert final["revision"] == PROCESSES * EVENTS_EACH + 1
    assert final["state"] == "CREATED"
    assert final["last_event"] == "update"
    # every (worker, n) pair landed exactly once
    seen = sorted((h["data"]["worker"], h["data"]["n"]) for h in updates)
    assert seen == [(w, n) for w in range(PROCESSES) for n in range(EVENTS_EACH)]
    assert len({h["uuid"] for h in final["history"]}) == len(final["history"])


def test_concurrent_copies_of_the_same_messages_apply_once(jobs, store, store_uri):
    record, _ = jobs.create(jobs.pipeline_uuid, data={"race": "duplicates"})

    _race(store_uri, record["uuid"], SHARED_KEYS, keyed=True)

    final = store.get_job(record["uuid"])
    keys = [h.get("key") for h in final["history"][1:]]
    assert sorted(keys) == sorted(f"shared-{n}" for n in range(SHARED_KEYS))
    assert final["revision"] == SHARED_KEYS + 1
    assert final["state"] == "CREATED"


def _create(store_uri: str, pipeline: str) -> bool:
    """Child process: create the job every worker creates; whether this call created it."""
    from reactor.jobs import Jobs
    from reactor.store import open_store
    from reactor.tokens import Authority

    with open_store(store_uri) as store:
        return Jobs(store, Authority(TEST_SECRET)).create(pipeline, data={"race": "create"})[1]


def test_concurrent_creates_make_exactly_one_job(jobs, store, store_uri):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        created = pool.starmap(_create, [(store_uri, jobs.pipeline_uuid)] * PROCESSES)
    assert sorted(created) == [False] * (PROCESSES - 1) + [True]
    listed = store.list_jobs()
    assert len(listed) == 1
    assert listed[0]["revision"] == 1 and len(listed[0]["history"]) == 1


def _commit_light(store_uri: str, uuid: str, worker: int, count: int) -> None:
    """Child process: ``count`` compare-and-sets straight on the store, reading and writing
    without history (the hot path's calls); a miss re-reads and tries again."""
    from reactor import records
    from reactor.store import open_store

    with open_store(store_uri) as store:
        for n in range(count):
            entry = records.history_entry("update", {"worker": worker, "n": n},
                                          records.now_iso(), key=f"w{worker}-{n}")
            while True:
                record = store.get_job(uuid, with_history=False)
                assert "history" not in record
                after = store.commit_event(uuid, record["state"], record["state"], entry,
                                           with_history=False)
                if after is not None:
                    assert "history" not in after and after["revision"] > record["revision"]
                    break


def test_concurrent_commits_without_history_lose_nothing(jobs, store, store_uri):
    record, _ = jobs.create(jobs.pipeline_uuid, data={"race": "light"})
    count = EVENTS_EACH // 2
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_commit_light, args=(store_uri, record["uuid"], w, count))
               for w in range(PROCESSES // 2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join()
    assert [p.exitcode for p in workers] == [0] * len(workers)
    final = store.get_job(record["uuid"])
    assert final["revision"] == len(workers) * count + 1
    assert sorted(h["key"] for h in final["history"][1:]) == sorted(
        f"w{w}-{n}" for w in range(len(workers)) for n in range(count))
    # each worker's own entries are in the order it committed them
    for w in range(len(workers)):
        mine = [h["data"]["n"] for h in final["history"][1:] if h["data"]["worker"] == w]
        assert mine == list(range(count))
