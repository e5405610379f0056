"""Group commit in the pipeline: a list of many messages gives exactly what lists of one give,
on both backends, with conflicts (stale states, repeated keys, invalid transitions, bad tokens,
unknown jobs, deletes) mixed into the lists of twin jobs. The store level is in
test_store_waves.py, the consumer's in test_consumer_group_commit.py.
"""
from __future__ import annotations

import json
import sqlite3

import pytest

from twin_helpers import GHOST, same_shape, twins
from reactor.domain.errors import StoreUnavailable
from reactor.engine.pipeline import Item, Pipeline
from reactor.engine.statecache import StateCache
from reactor.store.sqlite import SqliteJobStore

# Group commit's planning with one store write for the list, and with a commit per change (what
# the consumer's pipeline process does with one commit per message).
SEPARATE = pytest.mark.parametrize("separate", [False, True],
                                   ids=["one-write", "separate-commits"])


def one(pipeline: Pipeline, item: Item):
    """``item`` processed on its own: a list of one."""
    [outcome] = pipeline.process([item])
    return outcome


def then_one_by_one(pipeline: Pipeline, items: list[Item], outcomes: list) -> list:
    """What a caller does with a list's outcomes: each undecided item on its own, in order."""
    return [o if o is not None else one(pipeline, i) for i, o in zip(items, outcomes)]


class Side:
    """Messages for one side of the twin jobs (same content, its own uuids and tokens)."""

    def __init__(self, jobs, uuids: list[str], name: str):
        self.jobs, self.uuids, self.name = jobs, uuids, name

    def event(self, n: int, event: str, data: dict | None = None, token: str | None = None,
              msg_id: str | None = None) -> Item:
        uuid = self.uuids[n] if n >= 0 else GHOST
        body = {"uuid": uuid, "name": event,
                "token": token or self.jobs.authority.job_token(uuid)}
        if data is not None:
            body["data"] = data
        return Item(json.dumps(body).encode(), f"{self.name}-{msg_id}" if msg_id else None)

    def delete(self, n: int) -> Item:
        body = {"uuid": self.uuids[n], "action": "delete", "force": True,
                "token": self.jobs.authority.admin_token()}
        return Item(json.dumps(body).encode(), f"{self.name}-del-{n}")


def shape(outcome, uuid_map: dict[str, str]) -> tuple:
    detail = outcome.detail
    for uuid, name in uuid_map.items():
        detail = detail.replace(uuid, name)
    detail = detail.replace("id:a-", "id:").replace("id:b-", "id:")
    return (outcome.label, outcome.event, outcome.state, detail)


def script(side: Side) -> list[list[Item]]:
    """Batches mixing every kind of message; each job's events in an order that matters."""
    return [
        [side.event(0, "run", {"step": 1}, msg_id="1"), side.event(1, "run", msg_id="2"),
         side.event(0, "update", {"step": 2}, msg_id="3"), side.event(2, "finish", msg_id="4"),
         side.event(1, "update", msg_id="5"), side.event(0, "update", {"step": 2}, msg_id="3"),
         side.event(3, "run", token="not-the-token", msg_id="6"), side.event(-1, "run"),
         Item(b'{"uuid": "oops"'), side.event(0, "finish", msg_id="7"),
         side.event(2, "run", msg_id="8"), side.event(4, "update", {"note": "x"}, msg_id="9")],
        [side.event(0, "update", {"step": 2}, msg_id="3"),        # redelivered: duplicate
         side.event(0, "index", msg_id="10"), side.event(1, "fail", msg_id="11"),
         side.delete(4), side.event(4, "update", msg_id="12"),    # after its delete: unknown
         side.event(0, "indexed", msg_id="13"), side.event(1, "update", msg_id="14"),
         side.event(3, "RESET", token=side.jobs.authority.admin_token(), msg_id="15"),
         side.event(3, "ready", token=side.jobs.authority.admin_token(), msg_id="16")],
    ]


@SEPARATE
def test_batches_give_the_same_outcomes_and_records_as_one_by_one(jobs, separate):
    a, b = twins(jobs, 5)
    pipeline = Pipeline(jobs)
    names = {u: f"<job {n}>" for side in (a, b) for n, u in enumerate(side)}
    alone = [one(pipeline, i) for batch in script(Side(jobs, a, "a")) for i in batch]
    group = Pipeline(jobs, separate_commits=separate)
    grouped = [o for batch in script(Side(jobs, b, "b")) for o in group.process(batch)]
    assert None not in grouped
    assert [shape(o, names) for o in grouped] == [shape(o, names) for o in alone]
    assert [o.label for o in grouped[:12]] == [
        "applied", "applied", "applied", "rejected:invalid_transition", "applied", "duplicate",
        "rejected:auth_failed", "rejected:unknown_job", "rejected:decode_error", "applied",
        "applied", "applied"]
    assert [o.label for o in grouped[12:]] == [
        "duplicate", "applied", "applied", "applied", "rejected:unknown_job", "applied",
        "rejected:invalid_transition", "applied", "applied"]
    for x, y in zip(a, b):
        assert same_shape(jobs.store.get_job(y), y) == same_shape(jobs.store.get_job(x), x)
    assert jobs.get(b[0])["state"] == "FINISHED"
    assert [h["name"] for h in jobs.get(b[0])["history"]] == \
        ["create", "run", "update", "finish", "index", "indexed"]
    assert jobs.store.get_job(b[4], include_hidden=True) is None


@SEPARATE
def test_a_stale_remembered_state_falls_back_and_decides_correctly(jobs, separate):
    (x, y), _ = twins(jobs, 2)
    group = Pipeline(jobs, separate_commits=separate)
    side = Side(jobs, [x, y], "s")
    assert [o.label for o in group.process([side.event(0, "run", msg_id="1"),
                                            side.event(1, "update", msg_id="2")])] == \
        ["applied", "applied"]
    assert (group.states.get(x), group.states.get(y)) == ("RUNNING", "CREATED")
    # Another writer moves both jobs behind the batch processor's back.
    other = Pipeline(jobs)
    for item in (side.event(0, "finish", msg_id="3"), side.event(1, "run", msg_id="4")):
        assert one(other, item).label == "applied"
    outcomes = group.process([side.event(0, "index", msg_id="5"),     # invalid from RUNNING
                              side.event(1, "update", msg_id="6")])  # CAS from CREATED misses
    assert [(o.label, o.state) for o in outcomes] == [("applied", "INDEXING"),
                                                      ("applied", "RUNNING")]
    assert "moved RUNNING → RUNNING" in outcomes[1].detail
    assert [h["name"] for h in jobs.get(y)["history"]] == ["create", "update", "run", "update"]
    assert (group.states.get(x), group.states.get(y)) == ("INDEXING", "RUNNING")


@SEPARATE
def test_a_stale_state_never_lets_a_later_event_overtake_an_earlier_one(jobs, separate):
    """Later events of a job are planned from the state its earlier ones lead to; when an
    earlier one misses, the later ones are not tried in the batch but follow it one by one."""
    (x,), _ = twins(jobs, 1)
    group = Pipeline(jobs, separate_commits=separate)
    side = Side(jobs, [x], "t")
    assert group.process([side.event(0, "update", msg_id="1")])[0].label == "applied"
    assert group.states.get(x) == "CREATED"
    # Another writer runs the job: the batch processor still remembers CREATED.
    assert one(Pipeline(jobs), side.event(0, "run", msg_id="2")).label == "applied"
    outcomes = group.process([side.event(0, "run", {"n": 1}, msg_id="3"),   # misses (RUNNING)
                              side.event(0, "update", {"n": 2}, msg_id="4")])
    # "update", planned from the RUNNING that "run" leads to, would have matched the job and
    # landed before "run" (applied one by one after the miss): it was not tried in the batch.
    assert [o.label for o in outcomes] == ["applied", "applied"]
    history = jobs.get(x)["history"]
    assert [(h["name"], h["data"]) for h in history[3:]] == [("run", {"n": 1}),
                                                             ("update", {"n": 2})]


@SEPARATE
def test_many_events_of_one_job_in_one_batch_apply_in_delivery_order(jobs, separate):
    (uuid,), _ = twins(jobs, 1)
    side = Side(jobs, [uuid], "o")
    names = ["run"] + ["update"] * 5 + ["finish", "index", "indexed", "validate", "validated",
                                        "finalize"]
    items = [side.event(0, name, {"i": i}, msg_id=str(i)) for i, name in enumerate(names)]
    outcomes = Pipeline(jobs, separate_commits=separate).process(items)
    assert {o.label for o in outcomes} == {"applied"}
    record = jobs.get(uuid)
    assert record["state"] == "FINALIZED" and record["revision"] == 1 + len(names)
    assert [h["data"] for h in record["history"][1:]] == [{"i": i} for i in range(len(names))]


def test_a_store_that_stops_answering_leaves_the_rest_undecided(sqlite_uri, authority):
    from reactor.domain.identifiers import pipeline_uuid
    from reactor.engine.jobs import Jobs

    store = SqliteJobStore(sqlite_uri, busy_timeout_s=0.05, lock_attempts=1)
    jobs = Jobs(store, authority)
    jobs.pipeline_uuid = pipeline_uuid("p")
    store.add_pipeline({"uuid": jobs.pipeline_uuid, "name": "p"})
    uuids, _ = twins(jobs, 3)
    side = Side(jobs, uuids, "d")
    group = Pipeline(jobs)
    items = [side.event(0, "run", msg_id="1"), side.event(1, "run", token="wrong", msg_id="2"),
             side.event(2, "run", msg_id="3"), side.event(0, "update", msg_id="4")]
    # Another process holds the write lock for longer than this store waits.
    other = sqlite3.connect(sqlite_uri[len("sqlite:///"):], isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        outcomes = group.process(items)
    finally:
        other.execute("ROLLBACK")
        other.close()
    # The bad token is decided before any write; the rest waits for the store.
    assert [o and o.label for o in outcomes] == [None, "rejected:auth_failed", None, None]
    assert [jobs.get(u)["revision"] for u in uuids] == [1, 1, 1]
    # The caller processes the undecided ones one by one, in order: each applied exactly once.
    final = then_one_by_one(group, items, outcomes)
    assert [o.label for o in final] == ["applied", "rejected:auth_failed", "applied", "applied"]
    assert [jobs.get(u)["state"] for u in uuids] == ["RUNNING", "CREATED", "RUNNING"]
    again = Pipeline(jobs)
    assert then_one_by_one(again, items, again.process(items))[0].label == "duplicate"
    store.close()


def test_separate_commits_give_each_change_a_commit_of_its_own(jobs, monkeypatch):
    uuids, _ = twins(jobs, 3)
    side = Side(jobs, uuids, "c")
    group = Pipeline(jobs, separate_commits=True)
    commits = []
    real = jobs.store.commit_event

    def commit_event(uuid, *args, **kwargs):
        commits.append(uuid)
        return real(uuid, *args, **kwargs)

    def shared(*args, **kwargs):
        raise AssertionError("a shared write for changes that must commit separately")

    monkeypatch.setattr(jobs.store, "commit_event", commit_event)
    monkeypatch.setattr(jobs.store, "commit_events", shared)
    monkeypatch.setattr(jobs.store, "commit_waves", shared)
    items = [side.event(0, "run", msg_id="1"), side.event(1, "run", msg_id="2"),
             side.event(0, "update", msg_id="3"), side.event(2, "update", msg_id="4")]
    assert [o.label for o in group.process(items)] == ["applied"] * 4
    # Wave after wave: the first event of each job, then job 0's second.
    assert commits == [uuids[0], uuids[1], uuids[2], uuids[0]]
    assert [h["name"] for h in jobs.get(uuids[0])["history"]] == ["create", "run", "update"]


def test_separate_commits_keep_what_was_committed_when_the_store_fails_midway(jobs,
                                                                              monkeypatch):
    uuids, _ = twins(jobs, 3)
    side = Side(jobs, uuids, "f")
    group = Pipeline(jobs, separate_commits=True)
    real = jobs.store.commit_event
    commits = []

    def commit_event(*args, **kwargs):
        commits.append(args[0])
        if len(commits) > 1:  # the store stops answering after the first commit
            raise StoreUnavailable("the store does not answer")
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs.store, "commit_event", commit_event)
    items = [side.event(0, "run", msg_id="1"), side.event(1, "run", msg_id="2"),
             side.event(2, "run", msg_id="3")]
    outcomes = group.process(items)
    # The committed one keeps its outcome; the rest are left to the one-by-one path.
    assert [o and o.label for o in outcomes] == ["applied", None, None]
    assert [jobs.get(u)["revision"] for u in uuids] == [2, 1, 1]
    monkeypatch.setattr(jobs.store, "commit_event", real)
    final = then_one_by_one(group, items, outcomes)
    assert [o.label for o in final] == ["applied"] * 3
    assert [jobs.get(u)["revision"] for u in uuids] == [2, 2, 2]


def test_state_cache_is_bounded_and_forgets_the_least_recently_used():
    cache = StateCache(2)
    cache.put("a", "RUNNING")
    cache.put("b", "CREATED")
    assert cache.get("a") == "RUNNING"  # a is now the most recently used
    cache.put("c", "FAILED")
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == \
        ("RUNNING", None, "FAILED", 2)
    cache.drop("a")
    assert cache.get("a") is None
    with pytest.raises(ValueError, match="cache size must be a non-negative integer"):
        StateCache(-1)

