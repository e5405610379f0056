"""Several processes racing on jobs through the public job operations: no write is lost or
doubled, and a delete racing with events loses neither the events nor any other link.

Runs against both backends: the SQLite file shared by every process, MongoDB over TCP (each
process with a client of its own).
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
    from reactor.engine.jobs import Jobs
    from reactor.store import open_store
    from reactor.domain.tokens import Authority

    authority = Authority(TEST_SECRET)
    with open_store(store_uri) as store:
        jobs = Jobs(store, authority)
        token = authority.job_token(uuid)
        for n in range(count):
            # keyed: every worker sends the same keys, as redelivered copies of one message would
            key = f"shared-{n}" if keyed else None
            jobs.apply(uuid, "update", {"worker": worker, "n": n}, token=token, key=key)


def _run_all(target, arguments: list[tuple]) -> None:
    """Run ``target`` once per argument tuple, each in a fresh (spawned) process, all at once;
    every one must exit 0."""
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=target, args=args) for args in arguments]
    for p in workers:
        p.start()
    for p in workers:
        p.join()
    assert [p.exitcode for p in workers] == [0] * len(workers)


def _race(store_uri: str, uuid: str, count: int, keyed: bool) -> None:
    _run_all(_apply_updates, [(store_uri, uuid, w, count, keyed) for w in range(PROCESSES)])


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
    from reactor.engine.jobs import Jobs
    from reactor.store import open_store
    from reactor.domain.tokens import Authority

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
    from reactor.domain import records
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
    workers = range(PROCESSES // 2)
    _run_all(_commit_light, [(store_uri, record["uuid"], w, count) for w in workers])
    final = store.get_job(record["uuid"])
    assert final["revision"] == len(workers) * count + 1
    assert sorted(h["key"] for h in final["history"][1:]) == sorted(
        f"w{w}-{n}" for w in range(len(workers)) for n in range(count))
    # each worker's own entries are in the order it committed them
    for w in range(len(workers)):
        mine = [h["data"]["n"] for h in final["history"][1:] if h["data"]["worker"] == w]
        assert mine == list(range(count))


# --- many jobs, interleaved --------------------------------------------------------------------

JOBS = 50
ROUNDS = 4  # each worker's events per job; each is also sent a second time (a redelivered copy)
MODES = ("apply", "apply_without_history", "group_commit")


def _send(jobs, tokens: dict, events: list[tuple[str, str]], mode: str,
          worker: int) -> list[bool]:
    """Apply ``events`` (job uuid, key) in ``mode``; whether each one was applied."""
    data = {uuid: {"worker": worker, "key": key} for uuid, key in events}
    if mode != "group_commit":
        return [jobs.apply(uuid, "update", data[uuid], token=tokens[uuid], key=key,
                           with_history=mode == "apply").applied for uuid, key in events]
    # One wave, one store write: the planned state of a reflexive update is always right,
    # so only a repeated key misses; those go one by one, as the consumer does.
    planned = [jobs.plan(uuid, "update", data[uuid], tokens[uuid], key, "CREATED")
               for uuid, key in events]
    results = jobs.commit_waves([planned], with_history=False)[0]
    return [result.applied if result is not None else jobs.apply(
        uuid, "update", data[uuid], token=tokens[uuid], key=key).applied
        for (uuid, key), result in zip(events, results)]


def _interleave(store_uri: str, uuids: list[str], worker: int, results) -> None:
    """Child process with a client of its own: ``ROUNDS`` update events on every job, each
    with a duplicate key of its own, and a copy of each round's events after the next round's;
    reports (worker, applied, refused copies)."""
    from reactor.engine.jobs import Jobs
    from reactor.store import open_store
    from reactor.domain.tokens import Authority

    authority = Authority(TEST_SECRET)
    mode = MODES[worker % len(MODES)]
    shift = worker * 7 % len(uuids)  # workers meet on every job, each at its own time
    order = uuids[shift:] + uuids[:shift]
    tokens = {uuid: authority.job_token(uuid) for uuid in uuids}
    applied, refused = 0, 0
    with open_store(store_uri) as store:
        jobs = Jobs(store, authority)
        previous: list[tuple[str, str]] = []
        for r in range(ROUNDS + 1):
            if r < ROUNDS:
                fresh = [(uuid, f"w{worker}-r{r}-{uuid[-6:]}") for uuid in order]
                applied += sum(_send(jobs, tokens, fresh, mode, worker))
            else:
                fresh = []
            refused += sum(not a for a in _send(jobs, tokens, previous, mode, worker))
            previous = fresh
    results.put((worker, applied, refused))


def test_interleaved_events_on_many_jobs_apply_exactly_once(jobs, store, store_uri):
    """8 processes, each with its own client, send interleaved update events (and a copy of
    each) to the same 50 jobs through ``Jobs.apply`` and group commit: every event is applied
    exactly once, and every copy is refused."""
    uuids = [jobs.create(jobs.pipeline_uuid, data={"interleaved": n})[0]["uuid"]
             for n in range(JOBS)]
    results = multiprocessing.get_context("spawn").Queue()
    _run_all(_interleave, [(store_uri, uuids, w, results) for w in range(PROCESSES)])
    reported = sorted(results.get(timeout=60) for _ in range(PROCESSES))
    assert reported == [(w, JOBS * ROUNDS, JOBS * ROUNDS) for w in range(PROCESSES)]
    for uuid in uuids:
        final = store.get_job(uuid)
        keys = [h["key"] for h in final["history"][1:]]
        assert final["revision"] == 1 + PROCESSES * ROUNDS, uuid
        assert len(keys) == len(set(keys)), f"{uuid}: a duplicate key was applied twice"
        assert sorted(keys) == sorted(f"w{w}-r{r}-{uuid[-6:]}" for w in range(PROCESSES)
                                      for r in range(ROUNDS))
        assert all(h["data"]["key"] == h["key"] for h in final["history"][1:])
        # each worker's events reached each job in the order that worker sent them
        for w in range(PROCESSES):
            mine = [k for k in keys if k.startswith(f"w{w}-")]
            assert mine == [f"w{w}-r{r}-{uuid[-6:]}" for r in range(ROUNDS)]


# --- deletes racing with events -----------------------------------------------------------------

DELETE_EVENTS = 25


def _delete_and_update(store_uri: str, doomed: str, linking: str, worker: int) -> None:
    """Child process: hard-delete ``doomed`` (unlinking it everywhere) in the middle of
    ``DELETE_EVENTS`` update events on ``linking``, the job that links every doomed one."""
    from reactor.engine.jobs import Jobs
    from reactor.store import open_store
    from reactor.domain.tokens import Authority

    authority = Authority(TEST_SECRET)
    with open_store(store_uri) as store:
        jobs = Jobs(store, authority)
        token = authority.job_token(linking)
        for n in range(DELETE_EVENTS):
            if n == DELETE_EVENTS // 2:
                assert jobs.delete(doomed, authority.admin_token()) is True
            jobs.apply(linking, "update", {"worker": worker, "n": n}, token=token,
                       key=f"w{worker}-{n}", with_history=False)


def test_concurrent_deletes_unlink_everything_and_lose_no_event(jobs, store, store_uri):
    """8 processes each delete one of the jobs another job links to, while all of them apply
    events to that job: every reference is gone, no other link is touched, no event lost."""
    doomed = [jobs.create(jobs.pipeline_uuid, data={"doomed": n})[0]["uuid"]
              for n in range(PROCESSES)]
    keep = jobs.create(jobs.pipeline_uuid, data={"kept": True})[0]["uuid"]
    linking = jobs.create(jobs.pipeline_uuid, data={"links": "all"},
                          child_of=[*doomed, keep])[0]["uuid"]
    store.put_document("files", {"uuid": "105-race", "derived_from": [*doomed, keep],
                                 "generated_by": doomed[0]})
    _run_all(_delete_and_update, [(store_uri, d, linking, w) for w, d in enumerate(doomed)])
    assert all(store.get_job(d, include_hidden=True) is None for d in doomed)
    final = store.get_job(linking)
    assert final["child_of"] == [keep]
    assert final["revision"] == 1 + PROCESSES * DELETE_EVENTS
    assert sorted(h["key"] for h in final["history"][1:]) == sorted(
        f"w{w}-{n}" for w in range(PROCESSES) for n in range(DELETE_EVENTS))
    assert store.get_document("files", "105-race") == {"uuid": "105-race",
                                                      "derived_from": [keep]}
