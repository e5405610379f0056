"""Group commit: a batch gives exactly what one-by-one processing gives, on both backends.

Store level: ``commit_events`` against ``commit_event`` on twin jobs. Pipeline level: lists of
many messages against lists of one on twin jobs, with conflicts (stale states, repeated keys,
invalid transitions, bad tokens, unknown jobs, deletes) mixed into the lists.
"""
from __future__ import annotations

import json
import sqlite3

import pymongo
import pytest

from reactor.domain import records
from reactor.engine.statecache import StateCache
from reactor.domain.errors import StoreUnavailable
from reactor.domain.identifiers import typed_uuid
from reactor.engine.pipeline import Item, Pipeline
from reactor.store import open_store
from reactor.store.sqlite import SqliteJobStore

GHOST = typed_uuid("pipelinejob", "no such job")
T1 = "2024-01-01T00:00:01.000Z"


def entry(name: str, key: str | None = None, data: dict | None = None) -> dict:
    return records.history_entry(name, data if data is not None else {"e": name}, T1, key)


def twins(jobs, count: int) -> tuple[list[str], list[str]]:
    """``count`` pairs of jobs identical but for their uuid (``a`` and ``b`` sides)."""
    a = [jobs.create(jobs.pipeline_uuid, data={"n": n, "side": "a"})[0]["uuid"]
         for n in range(count)]
    b = [jobs.create(jobs.pipeline_uuid, data={"n": n, "side": "b"})[0]["uuid"]
         for n in range(count)]
    return a, b


def same_shape(record: dict | None, uuid: str) -> dict | None:
    """A record with everything that differs between twins (uuid, data, entry ids) blanked."""
    if record is None:
        return None
    text = json.dumps(record, sort_keys=True).replace(uuid, "<job>")
    text = text.replace('"id:a-', '"id:').replace('"id:b-', '"id:')  # message ids per side
    out = json.loads(text)
    for name in ("data", "created", "updated"):  # twins differ in data and creation time
        out.pop(name)
    out["history"] = [{k: v for k, v in h.items() if k not in ("uuid", "date")}
                      for h in out["history"]]
    out["history"][0]["data"] = None  # the create entry holds the (different) job data
    return out


# --- store: commit_events ----------------------------------------------------------------------

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


# --- pipeline: lists of many against lists of one ---------------------------------------------

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


# --- the consumer with group commit (a real ``reactor consume`` subprocess) -------------------

@pytest.fixture
def batch_setup(amqp_url, mongo_store_uri, tmp_path):
    from queue_helpers import QueueSetup

    s = QueueSetup(amqp_url, mongo_store_uri, tmp_path,
                   overrides={"batch_size": 20, "batch_wait_ms": 200, "transition_retries": 0})
    yield s
    s.close()


@pytest.mark.rabbitmq
@pytest.mark.mongo
def test_consumer_group_commit_settles_each_message_after_the_commit(batch_setup):
    from queue_helpers import (drain, event, make_jobs, queue_depth, stop, total_depth,
                               wait_until)
    from reactor.contract.headers import ATTEMPTS, REASON
    from reactor.broker.publisher import OutgoingMessage, publish

    setup = batch_setup
    jobs = make_jobs(setup.app, 4, "batch")
    (a, ta), (b, tb), (c, tc), (d, td) = jobs
    sent = [("run-a", a, event(a, "run", ta)), ("run-b", b, event(b, "run", tb)),
            ("run-c", c, event(c, "run", tc)), ("upd-a", a, event(a, "update", ta, {"n": 1})),
            ("run-a", a, event(a, "run", ta)),                  # same id again: a duplicate
            ("bad-token", d, event(d, "run", "not-the-token")),
            ("too-early", b, event(b, "validate", tb)),         # invalid from RUNNING
            ("garbage", c, b"{not json"),
            ("fin-c", c, event(c, "finish", tc)), ("upd-b", b, event(b, "update", tb))]
    report = publish(setup.amqp_url, setup.topology,
                     [OutgoingMessage(f"msg {i}", body, key, mid)
                      for i, (mid, key, body) in enumerate(sent)])
    assert report.ok
    proc = setup.start_consumer()
    dead = setup.names["dead_letter_queue"]
    wait_until(lambda: queue_depth(setup.amqp_url, dead) == 3, 120, "three dead letters")
    wait_until(lambda: sum(len(setup.app.store.get_job(u)["history"]) for u, _ in jobs) == 10,
               120, "six events applied")
    assert stop(proc) == 0, setup.logs()
    # Nothing was left unsettled: unacked messages would be back in the queues now.
    assert total_depth(setup.amqp_url, [setup.names["queue"], setup.names["retry_queue"]]) == 0
    letters = {g.properties.message_id: g.headers for g in drain(setup.amqp_url, dead)}
    assert {k: h[REASON] for k, h in letters.items()} == {
        "bad-token": "auth_failed", "too-early": "invalid_transition",
        "garbage": "decode_error"}
    assert all(h[ATTEMPTS] == 1 for h in letters.values())
    store = setup.app.store
    assert [store.get_job(u)["state"] for u, _ in jobs] == \
        ["RUNNING", "RUNNING", "FINISHED", "CREATED"]
    history = {u: store.get_job(u)["history"] for u, _ in jobs}
    assert [h["name"] for h in history[a]] == ["create", "run", "update"]
    assert [h["name"] for h in history[b]] == ["create", "run", "update"]
    assert [h["name"] for h in history[c]] == ["create", "run", "finish"]
    # The first events of a, b and c went to the store in one write (one date per write).
    assert history[a][1]["date"] == history[b][1]["date"] == history[c][1]["date"]
    logs = setup.logs()
    assert logs.count("reactor.consume.consumer duplicate:") == 1
    assert logs.count("reactor.consume.consumer applied:") == 6


def test_a_bad_batch_size_is_a_start_up_error_naming_the_key():
    from reactor.consume.consumer import Consumer
    from reactor.consume.settle import Limits
    from reactor.domain.errors import ConfigError
    from reactor.broker.transport import Topology

    def connect(*args):
        raise AssertionError("connecting before the configuration was checked")

    with pytest.raises(ConfigError, match="bad value for 'batch_size': 0"):
        Consumer(None, lambda: None, connect, Topology(), 10, Limits(), batch_size=0)


class CountingStore:
    """A real store that counts the commits made through it, one by one or in batches."""

    def __init__(self, store):
        self.store = store
        self.calls = {"commit_event": 0, "commit_events": 0, "commit_waves": 0,
                      "batched_changes": 0}

    def __getattr__(self, name):
        return getattr(self.store, name)

    def commit_event(self, *args, **kwargs):
        self.calls["commit_event"] += 1
        return self.store.commit_event(*args, **kwargs)

    def commit_events(self, changes, *args, **kwargs):
        self.calls["commit_events"] += 1
        self.calls["batched_changes"] += len(changes)
        return self.store.commit_events(changes, *args, **kwargs)

    def commit_waves(self, waves, *args, **kwargs):
        self.calls["commit_waves"] += 1
        self.calls["batched_changes"] += sum(len(wave) for wave in waves)
        return self.store.commit_waves(waves, *args, **kwargs)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("batch_size", [1, None], ids=["batch_size-1", "default"])
def test_batch_size_one_commits_each_message_alone_and_the_default_groups_them(
        amqp_url, sqlite_uri, tmp_path, batch_size):
    import threading

    from queue_helpers import (QueueSetup, Workload, connection_factory, make_jobs, total_depth,
                               wait_until)
    from reactor.consume.consumer import Consumer
    from reactor.consume.settle import Limits
    from reactor.engine.jobs import Jobs
    from reactor.engine.runner import InProcessRunner

    setup = QueueSetup(amqp_url, sqlite_uri, tmp_path)
    try:
        app = setup.app
        size = batch_size or app.settings.batch_size
        work = Workload.build(make_jobs(app, 8, "paths"), 6)
        work.publish(setup)
        store = CountingStore(app.store)
        pipeline = Pipeline(Jobs(store, app.authority), app.settings.max_message_bytes)
        consumer = Consumer(InProcessRunner(pipeline), store.ping,
                            connection_factory(setup.amqp_url, setup.topology), setup.topology,
                            app.settings.prefetch, Limits.from_settings(app.settings),
                            batch_size=size)
        thread = threading.Thread(target=consumer.run, args=(False,))
        thread.start()
        try:
            wait_until(lambda: consumer.counts["applied"] == work.sent, 60, "every event acked")
        finally:
            consumer.request_stop()
            thread.join(60)
        counts = f"sent={work.sent} batch_size={size} counts={dict(consumer.counts)} " \
                 f"store_calls={store.calls}"
        work.check(app, counts)
        assert total_depth(setup.amqp_url, setup.queue_names()) == 0, counts
        if batch_size == 1:  # the one-by-one path: one compare-and-set write per message
            assert store.calls == {"commit_event": work.sent, "commit_events": 0,
                                   "commit_waves": 0, "batched_changes": 0}, counts
        else:  # group commit is the default: every event went to the store in a batch
            assert size > 1, counts
            assert store.calls["commit_event"] == 0, counts
            assert store.calls["batched_changes"] == work.sent, counts
            # One store write per batch, whatever number of waves: fewer writes than events.
            assert 0 < store.calls["commit_waves"] < work.sent, counts
    finally:
        setup.close()
