"""The store layer: both backends (SQLite file, MongoDB over TCP) must behave identically."""
from __future__ import annotations

import copy
import json
import socket
import sqlite3
import uuid as _uuid
from datetime import datetime

import pymongo
import pytest

from reactor.domain import records
from reactor.domain.errors import StoreError, StoreUnavailable
from reactor.domain.identifiers import job_uuid, pipeline_uuid, typed_uuid
from reactor.store import open_store
from reactor.store.bson_codec import encode_job

PIPELINE = pipeline_uuid("store-tests")
T0 = "2024-01-01T00:00:00.000Z"

# Keys that MongoDB would read as operators or paths, or that collide with the escape scheme.
AWKWARD = {
    "$set": {"state": "FINISHED"}, "$inc": {"revision": 100}, "a.b": 1, "%24x": "percent-24",
    "x%": "trailing", "%": "alone", "%2E": "escaped-dot", "$": "dollar", ".": "dot", "": "empty",
    "_id": "not the store's", "é✓ ключ": "unicode", "nul\x00key": "nul",
    "nested": [{"$where": "1", "k.k": [{"$": {".": None}}]}, {"ok": [1, 2.5, True, None]}],
}


def job_record(n: int = 0, *, date: str = T0, data: dict | None = None, **fields) -> dict:
    """A fresh job record (as Jobs.create makes them) with a distinct uuid per ``n``."""
    data = {"n": n} if data is None else data
    uid = job_uuid(PIPELINE, [], {"n": n})
    return records.new_job_record(uuid=uid, pipeline_uuid=PIPELINE, data=data, date=date, **fields)


def entry(name: str = "update", data: dict | None = None, key: str | None = None,
          date: str = "2024-01-01T00:00:01.000Z") -> dict:
    return records.history_entry(name, data, date, key)


def snapshot(store_uri: str) -> dict:
    """Everything in the store, read around the store layer: to prove that nothing changed."""
    if store_uri.startswith("sqlite:"):
        conn = sqlite3.connect(store_uri[len("sqlite:///"):])
        try:
            return {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall())
                    for table in ("jobs", "history", "pipelines", "documents")}
        finally:
            conn.close()
    client = pymongo.MongoClient(store_uri, serverSelectionTimeoutMS=3000)
    try:
        db = client.get_default_database()
        return {name: sorted(repr({k: v for k, v in d.items() if k != "_id"})
                             for d in db[name].find())
                for name in db.list_collection_names()}
    finally:
        client.close()


def closed_port() -> int:
    """A local TCP port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- create / read -----------------------------------------------------------------------------

def test_create_is_idempotent_and_returns_the_stored_record(store):
    record = job_record(1)
    stored, created = store.create_job(record)
    assert created is True
    assert stored == record
    again = job_record(1, date="2024-02-02T00:00:00.000Z", data={"other": True})
    again["uuid"] = record["uuid"]
    stored2, created2 = store.create_job(again)
    assert created2 is False
    assert stored2 == record  # the first write wins, nothing is overwritten
    assert store.get_job(record["uuid"]) == record
    assert len(store.list_jobs()) == 1


def test_get_unknown_job_is_none(store):
    assert store.get_job(typed_uuid("pipelinejob", "nobody")) is None


def test_timestamps_read_back_as_the_same_strings(store):
    record = job_record(2, date="2023-12-31T23:59:59.999Z")
    store.create_job(record)
    got = store.get_job(record["uuid"])
    assert got["created"] == got["updated"] == "2023-12-31T23:59:59.999Z"
    assert got["history"][0]["date"] == "2023-12-31T23:59:59.999Z"


def test_list_jobs_newest_first_with_filters_and_limit(store):
    a = job_record(10, date="2024-01-01T00:00:00.000Z")
    b = job_record(11, date="2024-01-03T00:00:00.000Z")
    c = job_record(12, date="2024-01-02T00:00:00.000Z")
    d = job_record(13, date="2024-01-02T00:00:00.000Z")  # same moment as c: uuid decides
    other = records.new_job_record(uuid=job_uuid(pipeline_uuid("other"), [], {}),
                                   pipeline_uuid=pipeline_uuid("other"), data={},
                                   date="2024-01-04T00:00:00.000Z")
    for r in (a, b, c, d, other):
        store.create_job(r)
    store.commit_event(a["uuid"], "CREATED", "RUNNING", entry("run"))
    tied = sorted([c["uuid"], d["uuid"]])
    everything = [other["uuid"], b["uuid"], *tied, a["uuid"]]
    assert [j["uuid"] for j in store.list_jobs()] == everything
    assert [j["uuid"] for j in store.list_jobs(limit=2)] == everything[:2]
    assert [j["uuid"] for j in store.list_jobs(state="RUNNING")] == [a["uuid"]]
    assert [j["uuid"] for j in store.list_jobs(pipeline_uuid=PIPELINE)] == everything[1:]
    assert store.list_jobs(state="FINISHED") == []


# --- compare-and-set ---------------------------------------------------------------------------

def test_commit_event_sets_state_revision_last_event_updated_and_history(store):
    record = job_record(3)
    store.create_job(record)
    e = entry("run", {"msg": "running"}, key="m-1", date="2024-01-01T00:00:05.123Z")
    after = store.commit_event(record["uuid"], "CREATED", "RUNNING", e)
    assert after["state"] == "RUNNING"
    assert after["revision"] == 2
    assert after["last_event"] == "run"
    assert after["updated"] == "2024-01-01T00:00:05.123Z"
    assert after["created"] == record["created"]
    assert after["history"] == record["history"] + [e]
    assert store.get_job(record["uuid"]) == after


def test_commit_event_misses_on_wrong_state_and_changes_nothing(store):
    record = job_record(4)
    store.create_job(record)
    assert store.commit_event(record["uuid"], "RUNNING", "FINISHED", entry("finish")) is None
    assert store.get_job(record["uuid"]) == record


def test_commit_event_misses_on_a_repeated_key(store):
    record = job_record(5)
    store.create_job(record)
    first = store.commit_event(record["uuid"], "CREATED", "CREATED", entry(key="msg-1"))
    assert first is not None
    assert store.commit_event(record["uuid"], "CREATED", "CREATED", entry(key="msg-1")) is None
    after = store.get_job(record["uuid"])
    assert after == first
    assert [h.get("key") for h in after["history"]] == [None, "msg-1"]
    # a different key, and an entry without a key, still apply
    assert store.commit_event(record["uuid"], "CREATED", "CREATED", entry(key="msg-2"))
    assert store.commit_event(record["uuid"], "CREATED", "CREATED", entry(key="msg-3"))
    final = store.commit_event(record["uuid"], "CREATED", "CREATED", entry())
    assert final["revision"] == 5
    # a key deep inside a longer history is still found, whatever entries follow it
    for key in ("msg-1", "msg-2", "msg-3"):
        assert store.commit_event(record["uuid"], "CREATED", "CREATED", entry(key=key)) is None
    assert store.get_job(record["uuid"]) == final
    assert [h.get("key") for h in final["history"]] == [None, "msg-1", "msg-2", "msg-3", None]


def test_a_repeated_key_is_refused_among_many_entries_single_and_batch(store):
    """The duplicate-key filter over long histories: every key already in a job's history is
    refused (first, middle, last, amid unkeyed entries), one by one and in a batch; a new key
    is accepted, also one that is only a value inside another entry's data or another job's
    key."""
    made = [job_record(300 + n) for n in range(3)]
    for record in made:
        store.create_job(record)
    uuids = [r["uuid"] for r in made]
    history_keys = [None if n % 10 == 9 else f"k{n}" for n in range(120)]
    for n, key in enumerate(history_keys):
        done = store.commit_events([(u, "CREATED", "CREATED", entry(data={"key": f"v{n}"},
                                                                    key=key)) for u in uuids])
        assert all(done)
    for key in ("k0", "k57", "k118"):
        assert store.commit_event(uuids[0], "CREATED", "CREATED", entry(key=key)) is None
    batch = store.commit_events([(uuids[0], "CREATED", "CREATED", entry(key="k1")),
                                 (uuids[1], "CREATED", "CREATED", entry(key="new")),
                                 (uuids[2], "CREATED", "CREATED", entry(key="k118"))])
    assert [r is not None for r in batch] == [False, True, False]
    assert store.commit_event(uuids[1], "CREATED", "CREATED", entry(key="new")) is None
    assert store.commit_events([(uuids[1], "CREATED", "CREATED", entry(key="new"))]) == [None]
    assert store.commit_event(uuids[2], "CREATED", "CREATED", entry(key="v5"))  # data only
    assert store.commit_events([(uuids[0], "CREATED", "CREATED", entry(key="new"))])[0]
    finals = [store.get_job(u) for u in uuids]
    assert [f["revision"] for f in finals] == [122, 122, 122]
    expected = [None, *history_keys]
    assert [[h.get("key") for h in f["history"]] for f in finals] == [
        expected + ["new"], expected + ["new"], expected + ["v5"]]


def test_mongo_jobs_of_both_stored_layouts_are_read_committed_and_deleted(mongo_store_uri):
    """Job documents written by earlier releases, ObjectId ``_id`` (the first layout) and
    ``_id`` = uuid, behave like new ones: read, listed, committed one by one and in a batch,
    refused as a second copy, hidden, deleted and unlinked."""
    from bson import ObjectId

    first = job_record(400, archive_path="/layouts/first")
    keyed = job_record(401, archive_path="/layouts/keyed")
    linking = job_record(402, child_of=[first["uuid"], keyed["uuid"]])
    store = open_store(mongo_store_uri)  # the indexes every release created
    client = pymongo.MongoClient(mongo_store_uri, serverSelectionTimeoutMS=3000)
    try:
        raw = client.get_default_database().jobs
        raw.insert_one({**encode_job(first), "_id": ObjectId()})
        raw.insert_one({**encode_job(keyed), "_id": keyed["uuid"]})
        store.create_job(linking)
        for record in (first, keyed):
            assert store.get_job(record["uuid"]) == record
            assert store.get_job(record["uuid"], with_history=False) == _no_history(record)
            assert store.create_job(record) == (record, False)
        assert {j["uuid"] for j in store.list_jobs()} == {first["uuid"], keyed["uuid"],
                                                           linking["uuid"]}
        assert store.archive_owners("/layouts") == sorted(
            [(first["uuid"], "/layouts/first"), (keyed["uuid"], "/layouts/keyed")])
        one = store.commit_event(first["uuid"], "CREATED", "RUNNING", entry("run", key="r"))
        assert one == store.get_job(first["uuid"]) and one["revision"] == 2
        assert store.commit_event(first["uuid"], "RUNNING", "RUNNING", entry(key="r")) is None
        batch = store.commit_events([
            (first["uuid"], "RUNNING", "FINISHED", entry("finish", key="f")),
            (keyed["uuid"], "CREATED", "RUNNING", entry("run", key="r"))])
        assert batch == [store.get_job(first["uuid"]), store.get_job(keyed["uuid"])]
        assert store.delete_job(keyed["uuid"], force=False) is True
        assert store.get_job(keyed["uuid"]) is None
        assert store.delete_job(first["uuid"], only_if_revision=2) is False
        assert store.delete_job(first["uuid"], only_if_revision=3) is True
        assert store.delete_job(keyed["uuid"]) is True
        assert [d["uuid"] for d in raw.find()] == [linking["uuid"]]
        assert store.get_job(linking["uuid"])["child_of"] == []
    finally:
        client.close()
        store.close()


def test_commit_event_misses_on_unknown_and_hidden_jobs(store):
    assert store.commit_event(typed_uuid("pipelinejob", "ghost"), "CREATED", "RUNNING",
                              entry("run")) is None
    record = job_record(6)
    store.create_job(record)
    assert store.delete_job(record["uuid"], force=False) is True
    assert store.commit_event(record["uuid"], "CREATED", "RUNNING", entry("run")) is None
    assert store.get_job(record["uuid"], include_hidden=True)["revision"] == 1


# --- history: order, length, and reads without it ---------------------------------------------

def _no_history(record: dict) -> dict:
    assert "history" in record
    return {k: v for k, v in record.items() if k != "history"}


def test_history_keeps_the_order_of_commits(store):
    record = job_record(60)
    store.create_job(record)
    expected = list(record["history"])
    for n in range(30):
        # keyed and unkeyed entries interleaved, with dates that do not sort like the order
        e = entry("update", {"n": n}, key=f"m-{n}" if n % 3 else None,
                  date=f"2024-01-01T00:00:{59 - n:02d}.000Z")
        assert store.commit_event(record["uuid"], "CREATED", "CREATED", e,
                                  with_history=False) is not None
        expected.append(e)
    got = store.get_job(record["uuid"])
    assert got["history"] == expected
    assert got["revision"] == 31
    assert store.list_jobs()[0]["history"] == expected
    # an event from a second job in between does not disturb the first one's order
    other = job_record(61)
    store.create_job(other)
    store.commit_event(other["uuid"], "CREATED", "RUNNING", entry("run"))
    last = entry("run", key="m-last")
    after = store.commit_event(record["uuid"], "CREATED", "RUNNING", last)
    assert after["history"] == expected + [last]
    assert store.get_job(record["uuid"]) == after


def test_a_job_with_300_events(store):
    record = job_record(62)
    store.create_job(record)
    entries = [entry("update", {"n": n, "pad": "x" * 100}, key=f"k-{n}",
                     date=f"2024-01-01T00:{n // 60:02d}:{n % 60:02d}.000Z") for n in range(300)]
    results = store.commit_events([(record["uuid"], "CREATED", "CREATED", entries[0])],
                                  with_history=False)
    for e in entries[1:-1]:
        results.append(store.commit_event(record["uuid"], "CREATED", "CREATED", e,
                                          with_history=False))
    final = store.commit_event(record["uuid"], "CREATED", "RUNNING", entries[-1])
    assert [r["revision"] for r in results] == list(range(2, 301))
    assert final["revision"] == 301 and final["state"] == "RUNNING"
    assert final["history"] == record["history"] + entries
    assert store.get_job(record["uuid"]) == final
    assert store.get_job(record["uuid"], with_history=False) == _no_history(final)
    # the first key, 300 entries back, still stops its message from applying twice
    assert store.commit_event(record["uuid"], "RUNNING", "RUNNING",
                              entry("update", key="k-0")) is None
    assert store.get_job(record["uuid"]) == final


def test_get_job_without_history(store):
    record = job_record(63)
    store.create_job(record)
    full = store.commit_event(record["uuid"], "CREATED", "RUNNING", entry("run", key="r"))
    light = store.get_job(record["uuid"], with_history=False)
    assert "history" not in light
    assert light == _no_history(full)
    assert store.get_job(typed_uuid("pipelinejob", "nobody"), with_history=False) is None
    store.delete_job(record["uuid"], force=False)
    assert store.get_job(record["uuid"], with_history=False) is None
    hidden = store.get_job(record["uuid"], include_hidden=True, with_history=False)
    assert hidden == _no_history(store.get_job(record["uuid"], include_hidden=True))
    assert hidden["_visible"] is False


def test_commit_event_without_history(store, store_uri):
    record = job_record(64)
    store.create_job(record)
    first = store.commit_event(record["uuid"], "CREATED", "RUNNING",
                               entry("run", {"a": 1}, key="once"), with_history=False)
    assert "history" not in first
    assert first == _no_history(store.get_job(record["uuid"]))
    assert first["state"] == "RUNNING" and first["revision"] == 2
    assert first["last_event"] == "run"
    for e in (entry("update", key=f"more-{n}") for n in range(3)):
        assert store.commit_event(record["uuid"], "RUNNING", "RUNNING", e, with_history=False)
    before = snapshot(store_uri)
    # a repeated key (now 4 entries back) misses, as does a stale state or an unknown job
    assert store.commit_event(record["uuid"], "RUNNING", "RUNNING",
                              entry("update", key="once"), with_history=False) is None
    assert store.commit_event(record["uuid"], "CREATED", "RUNNING", entry("run"),
                              with_history=False) is None
    assert store.commit_event(typed_uuid("pipelinejob", "ghost"), "CREATED", "RUNNING",
                              entry("run"), with_history=False) is None
    assert snapshot(store_uri) == before
    assert [h.get("key") for h in store.get_job(record["uuid"])["history"]] == [
        None, "once", "more-0", "more-1", "more-2"]


def test_commit_events_without_history(store):
    made = [job_record(70 + n) for n in range(4)]
    for r in made:
        store.create_job(r)
    store.commit_event(made[2]["uuid"], "CREATED", "CREATED", entry(key="seen"))
    results = store.commit_events([
        (made[0]["uuid"], "CREATED", "RUNNING", entry("run", key="a")),
        (made[1]["uuid"], "RUNNING", "FINISHED", entry("finish", key="b")),  # stale state
        (made[2]["uuid"], "CREATED", "CREATED", entry(key="seen")),  # repeated key
        (made[3]["uuid"], "CREATED", "CREATED", entry()),
        (typed_uuid("pipelinejob", "ghost"), "CREATED", "RUNNING", entry("run")),
    ], with_history=False)
    assert [r is not None for r in results] == [True, False, False, True, False]
    for r, m in zip(results, made):
        if r is not None:
            assert "history" not in r
            assert r == _no_history(store.get_job(m["uuid"]))
    full = store.commit_events([(made[1]["uuid"], "CREATED", "RUNNING", entry("run"))])
    assert full == [store.get_job(made[1]["uuid"])]
    assert len(full[0]["history"]) == 2


@pytest.mark.parametrize("flag", ["no", 0, None])
def test_with_history_must_be_a_boolean(store, flag):
    record = job_record(65)
    store.create_job(record)
    with pytest.raises(ValueError, match="with_history"):
        store.get_job(record["uuid"], with_history=flag)
    with pytest.raises(ValueError, match="with_history"):
        store.commit_event(record["uuid"], "CREATED", "RUNNING", entry("run"), with_history=flag)
    with pytest.raises(ValueError, match="with_history"):
        store.commit_events([(record["uuid"], "CREATED", "RUNNING", entry("run"))],
                            with_history=flag)
    assert store.get_job(record["uuid"]) == record


def test_mongo_commits_without_history_single_and_batch(mongo_store_uri):
    """findAndModify with a projection leaving the history out; a batch's read likewise."""
    store = open_store(mongo_store_uri)
    try:
        made = [job_record(80 + n) for n in range(3)]
        for r in made:
            store.create_job(r)
        one = store.commit_event(made[0]["uuid"], "CREATED", "RUNNING", entry("run", key="k"),
                                 with_history=False)
        assert one == _no_history(store.get_job(made[0]["uuid"]))
        assert store.commit_event(made[0]["uuid"], "RUNNING", "RUNNING",
                                  entry(key="k"), with_history=False) is None
        unkeyed = store.commit_event(made[0]["uuid"], "RUNNING", "RUNNING", entry(),
                                     with_history=False)
        assert unkeyed == _no_history(store.get_job(made[0]["uuid"]))
        batch = store.commit_events([
            (made[1]["uuid"], "CREATED", "RUNNING", entry("run", key="k1")),
            (made[2]["uuid"], "RUNNING", "FINISHED", entry("finish")),
            (made[0]["uuid"], "RUNNING", "RUNNING", entry(key="k"))], with_history=False)
        assert batch[0] == _no_history(store.get_job(made[1]["uuid"]))
        assert batch[1:] == [None, None]
        assert store.get_job(made[0]["uuid"])["revision"] == 3
    finally:
        store.close()


# --- escaping ----------------------------------------------------------------------------------

def test_operator_and_dotted_keys_round_trip_and_are_never_interpreted(store):
    data = copy.deepcopy(AWKWARD)
    record = job_record(7, data=data)
    stored, _ = store.create_job(record)
    assert stored["data"] == AWKWARD
    e = entry("update", copy.deepcopy(AWKWARD), key="k.$1%")
    after = store.commit_event(record["uuid"], "CREATED", "CREATED", e)
    assert after["state"] == "CREATED"  # "$set" in data did not set anything
    assert after["revision"] == 2  # "$inc" in data did not increment anything
    assert after["history"][-1] == e
    got = store.get_job(record["uuid"])
    assert got["data"] == AWKWARD
    assert got["history"][-1]["data"] == AWKWARD
    assert got["history"][-1]["key"] == "k.$1%"
    # the repeated awkward key is still recognised
    assert store.commit_event(record["uuid"], "CREATED", "CREATED",
                              entry("update", {}, key="k.$1%")) is None
    store.put_document("files", {"uuid": "105-doc", "meta": copy.deepcopy(AWKWARD)})
    assert store.get_document("files", "105-doc") == {"uuid": "105-doc", "meta": AWKWARD}
    store.add_pipeline({"uuid": PIPELINE, "name": "p", "spec": copy.deepcopy(AWKWARD)})
    assert store.get_pipeline(PIPELINE)["spec"] == AWKWARD


def test_mongo_stores_dates_as_bson_dates_and_escapes_keys(mongo_store_uri):
    store = open_store(mongo_store_uri)
    try:
        record = job_record(8, data={"$set": {"a.b": 1}})
        store.create_job(record)
        store.commit_event(record["uuid"], "CREATED", "RUNNING", entry("run", {"x.y": 1}))
    finally:
        store.close()
    client = pymongo.MongoClient(mongo_store_uri, serverSelectionTimeoutMS=3000)
    try:
        raw = client.get_default_database().jobs.find_one({"uuid": record["uuid"]})
    finally:
        client.close()
    assert isinstance(raw["created"], datetime) and isinstance(raw["updated"], datetime)
    assert all(isinstance(h["date"], datetime) for h in raw["history"])
    assert raw["data"] == {"%24set": {"a%2Eb": 1}}
    assert raw["history"][1]["data"] == {"x%2Ey": 1}


# --- delete ------------------------------------------------------------------------------------

def test_hard_delete_removes_the_job_and_every_linkage_reference(store):
    target = job_record(20)
    keep = typed_uuid("generic", "keep")
    child = job_record(21, child_of=[target["uuid"], keep], acted_on=[target["uuid"]])
    store.create_job(target)
    store.create_job(child)
    store.put_document("files", {"uuid": "105-a", "child_of": [target["uuid"], keep],
                                 "derived_from": [target["uuid"]], "note": target["uuid"]})
    store.put_document("references", {"uuid": "109-a", "acted_on": [keep, target["uuid"]],
                                      "derived_using": [keep]})
    store.put_document("samples", {"uuid": "103-a", "generated_by": target["uuid"],
                                   "acted_using": [keep]})
    store.put_document("widgets", {"uuid": "w-1", "derived_using": [target["uuid"], target["uuid"]],
                                   "derived_from": []})
    store.put_document("files", {"uuid": "105-b", "child_of": [keep]})
    store.add_pipeline({"uuid": PIPELINE, "name": "p", "acted_using": [target["uuid"], keep]})

    assert store.delete_job(target["uuid"]) is True

    assert store.get_job(target["uuid"], include_hidden=True) is None
    assert store.get_document("files", "105-a") == {
        "uuid": "105-a", "child_of": [keep], "derived_from": [], "note": target["uuid"]}
    assert store.get_document("references", "109-a") == {
        "uuid": "109-a", "acted_on": [keep], "derived_using": [keep]}
    assert store.get_document("samples", "103-a") == {"uuid": "103-a", "acted_using": [keep]}
    assert store.get_document("widgets", "w-1") == {"uuid": "w-1", "derived_using": [],
                                                    "derived_from": []}
    assert store.get_document("files", "105-b") == {"uuid": "105-b", "child_of": [keep]}
    assert store.get_pipeline(PIPELINE)["acted_using"] == [keep]
    other = store.get_job(child["uuid"])
    assert other["child_of"] == [keep]
    assert other["acted_on"] == []
    assert other["revision"] == child["revision"] and other["history"] == child["history"]
    assert store.delete_job(target["uuid"]) is False


def test_soft_delete_hides_the_job(store):
    record = job_record(22)
    other = job_record(23)
    store.create_job(record)
    store.create_job(other)
    store.put_document("files", {"uuid": "105-c", "child_of": [record["uuid"]]})
    assert store.delete_job(record["uuid"], force=False) is True
    assert store.get_job(record["uuid"]) is None
    hidden = store.get_job(record["uuid"], include_hidden=True)
    assert hidden["_visible"] is False and hidden["history"] == record["history"]
    assert [j["uuid"] for j in store.list_jobs()] == [other["uuid"]]
    assert {j["uuid"] for j in store.list_jobs(include_hidden=True)} == {record["uuid"],
                                                                           other["uuid"]}
    assert store.get_document("files", "105-c")["child_of"] == [record["uuid"]]  # links kept
    assert store.delete_job(record["uuid"], force=False) is False  # already hidden
    assert store.create_job(job_record(22))[1] is False  # the hidden job still owns its uuid
    assert store.delete_job(record["uuid"], force=True) is True
    assert store.get_job(record["uuid"], include_hidden=True) is None
    assert store.get_document("files", "105-c")["child_of"] == []


def test_delete_only_if_revision(store):
    record = job_record(24)
    store.create_job(record)
    store.put_document("files", {"uuid": "105-d", "child_of": [record["uuid"]]})
    store.commit_event(record["uuid"], "CREATED", "RUNNING", entry("run"))
    assert store.delete_job(record["uuid"], only_if_revision=1) is False
    assert store.delete_job(record["uuid"], force=False, only_if_revision=1) is False
    assert store.get_job(record["uuid"])["revision"] == 2
    assert store.get_document("files", "105-d")["child_of"] == [record["uuid"]]
    assert store.delete_job(record["uuid"], only_if_revision=2) is True
    assert store.get_job(record["uuid"], include_hidden=True) is None
    assert store.get_document("files", "105-d")["child_of"] == []


def test_delete_unknown_job_is_false(store):
    assert store.delete_job(typed_uuid("pipelinejob", "nobody")) is False
    assert store.delete_job(typed_uuid("pipelinejob", "nobody"), force=False) is False


# --- archive owners ----------------------------------------------------------------------------

def _owners(store, *paths: str, hidden: tuple[str, ...] = (), start: int = 100) -> dict[str, str]:
    """Create one job per archive path (those in ``hidden`` soft-deleted); uuid → path."""
    made = {}
    for n, path in enumerate(paths, start):
        record = job_record(n, archive_path=path)
        store.create_job(record)
        if path in hidden:
            store.delete_job(record["uuid"], force=False)
        made[record["uuid"]] = path
    return made


def test_archive_owners_finds_the_path_what_lies_below_it_and_its_ancestors(store):
    made = _owners(store, "/r/products/v2/p/j1", "/r/products/v2/p/j2", "/r/products/v2",
                   "/r/products/v2/p", "/r/products/v2-old/x", "/r/products/v20",
                   "/r/products/v2/p/j1/deeper/still", "/r/other", "", "/r", "relative/p",
                   hidden=("/r/products/v2/p/j2",))
    by_path = {path: uuid for uuid, path in made.items()}

    def owners(path):
        return store.archive_owners(path)

    expected = sorted((by_path[p], p) for p in (
        "/r/products/v2/p/j1", "/r/products/v2/p/j2", "/r/products/v2", "/r/products/v2/p",
        "/r/products/v2/p/j1/deeper/still", "/r"))
    assert owners("/r/products/v2/p") == expected  # by uuid, hidden jobs included
    assert owners("/r/products/v2/p/") == expected  # normalised first
    assert owners("/r/products/v2/p/j1") == sorted((by_path[p], p) for p in (
        "/r/products/v2/p/j1", "/r/products/v2", "/r/products/v2/p",
        "/r/products/v2/p/j1/deeper/still", "/r"))
    assert owners("/r/products/v") == [(by_path["/r"], "/r")]  # a string prefix is no parent
    assert owners("/elsewhere") == []
    assert owners("/r/products/v2/p/j3") == sorted((by_path[p], p) for p in (
        "/r/products/v2", "/r/products/v2/p", "/r"))
    assert owners("relative") == [(by_path["relative/p"], "relative/p")]
    assert {u for u, _ in owners("/")} == {u for u, p in made.items() if p.startswith("/")}


def test_archive_owners_matches_legacy_trailing_slashes(store):
    made = _owners(store, "/r/a/", "/r/a/b/", "/r/a//c", start=120)
    by_path = {path: uuid for uuid, path in made.items()}
    assert store.archive_owners("/r/a/b") == sorted(
        [(by_path["/r/a/"], "/r/a/"), (by_path["/r/a/b/"], "/r/a/b/")])
    assert [p for _, p in store.archive_owners("/r/a")] == sorted(
        ["/r/a/", "/r/a/b/", "/r/a//c"], key=lambda p: by_path[p])


@pytest.mark.parametrize("special", ["100%", "a_b", "a.b", "a*", "(x)", "[ab]", "a+b", "^x$",
                                     "a|b", "a?", "{1}", "back\\slash", "quote'\"", "é ✓",
                                     "a\nb", "a#b -c"])
def test_archive_owners_prefix_has_no_wildcards(store, special):
    # Paths holding what LIKE or a regular expression would read as a pattern: only the
    # literal path and what lies below it match, never a look-alike.
    base = f"/r/{special}"
    look_alikes = ["/r/" + special.replace(c, r) for c, r in (
        ("%", "X%"), ("_", "X"), (".", "X"), ("*", ""), ("(", ""), ("[", "a"), ("+", "bb"),
        ("^", ""), ("|", "X"), ("?", ""), ("{", ""), ("\\", "/"), ("'", "\\'"), ("é", "e"),
        ("\n", ""), ("#", "\\#"), (" ", "  "))
        if c in special] + [base + "x", base[:-1]]
    others = sorted({q for p in look_alikes if p != base for q in (p, p + "/job")})
    made = _owners(store, base, base + "/job", *others, start=140)
    by_path = {path: uuid for uuid, path in made.items()}
    assert store.archive_owners(base) == sorted(
        [(by_path[base], base), (by_path[base + "/job"], base + "/job")])


def test_archive_owners_of_several_paths_in_one_query(store):
    made = _owners(store, "/r/a/j", "/r/b", "/r/b/c/d", "rel/x/y", "/r/other", start=170)
    by_path = {path: uuid for uuid, path in made.items()}
    expected = sorted({*store.archive_owners("/r/a"), *store.archive_owners("/r/b/c"),
                       *store.archive_owners("rel/x")})
    assert expected == sorted((by_path[p], p) for p in ("/r/a/j", "/r/b", "/r/b/c/d", "rel/x/y"))
    assert store.archive_owners(["/r/a", "/r/b/c", "rel/x"]) == expected
    assert store.archive_owners(("/r/a", "/r/a/")) == store.archive_owners("/r/a")


@pytest.mark.parametrize("bad", ["", "   ", None, 5, "a\x00b", [], ["/r", 5], [None],
                                 {"/r": 1}])
def test_archive_owners_refuses_bad_paths(store, bad):
    with pytest.raises(ValueError, match="archive path"):
        store.archive_owners(bad)


# --- pipelines and documents -------------------------------------------------------------------

def test_pipelines_registry(store):
    b = {"uuid": pipeline_uuid("b"), "name": "beta", "version": 2}
    a = {"uuid": pipeline_uuid("a"), "name": "alpha"}
    assert store.add_pipeline(b) == (b, True)
    assert store.add_pipeline(a) == (a, True)
    assert store.add_pipeline({**b, "name": "renamed"}) == (b, False)
    assert store.get_pipeline(b["uuid"]) == b
    assert store.get_pipeline(pipeline_uuid("none")) is None
    assert store.list_pipelines() == [a, b]


def test_put_document_replaces_by_uuid(store):
    store.put_document("experiments", {"uuid": "102-x", "v": 1})
    store.put_document("experiments", {"uuid": "102-x", "v": 2})
    assert store.get_document("experiments", "102-x") == {"uuid": "102-x", "v": 2}
    assert store.get_document("experiments", "102-y") is None
    assert store.get_document("samples", "102-x") is None


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Files", "jobs", "pipelines", "a.b", "$x", "", "1abc",
                                  "system.js", "files-2", None, "x" * 65])
def test_bad_collection_names_are_refused_and_nothing_is_written(store, store_uri, name):
    before = snapshot(store_uri)
    with pytest.raises(ValueError, match="collection"):
        store.put_document(name, {"uuid": "105-z"})
    with pytest.raises(ValueError, match="collection"):
        store.get_document(name, "105-z")
    assert snapshot(store_uri) == before


@pytest.mark.parametrize("doc, field", [
    ({"uuid": pipeline_uuid("x")}, "name"),
    ({"uuid": pipeline_uuid("x"), "name": 3}, "name"),
    ({"uuid": pipeline_uuid("x"), "name": ""}, "name"),
    ({"name": "x"}, "uuid"),
    ({"uuid": None, "name": "x"}, "uuid"),
    ({"uuid": pipeline_uuid("x"), "name": "x", "_id": 1}, "_id"),
    ({"uuid": pipeline_uuid("x"), "name": "x", "bad": float("nan")}, "nan"),
    ("not a dict", "dict"),
])
def test_bad_pipelines_are_refused_and_nothing_is_written(store, store_uri, doc, field):
    before = snapshot(store_uri)
    with pytest.raises(ValueError, match=field):
        store.add_pipeline(doc)
    assert store.list_pipelines() == []
    assert snapshot(store_uri) == before


def _without(record: dict, key: str) -> dict:
    return {k: v for k, v in record.items() if k != key}


@pytest.mark.parametrize("mutate, message", [
    (lambda r: _without(r, "uuid"), "uuid"),
    (lambda r: {**r, "created": "2024-01-01 00:00:00"}, "created"),
    (lambda r: {**r, "updated": "2024-13-01T00:00:00.000Z"}, "updated"),
    (lambda r: {**r, "revision": "1"}, "revision"),
    (lambda r: {**r, "history": [{**r["history"][0], "date": 5}]}, "date"),
    (lambda r: {**r, "data": {1: "non-string key"}}, "non-string key"),
    (lambda r: {**r, "data": {"big": 2 ** 64}}, "64-bit"),
    (lambda r: {**r, "data": {"x": float("inf")}}, "inf"),
    (lambda r: {**r, "data": {"x": {1, 2}}}, "set"),
    (lambda r: {**r, "_id": "mine"}, "_id"),
    (lambda r: {**r, "_visible": "yes"}, "_visible"),
    (lambda r: {**r, "created": "2024-02-30T00:00:00.000Z"}, "created"),
    (lambda r: {**r, "history": [{**r["history"][0], "key": "k"},
                                 {**r["history"][0], "key": "k"}]}, "two entries with the key"),
])
def test_bad_job_records_are_refused_and_nothing_is_written(store, store_uri, mutate, message):
    before = snapshot(store_uri)
    with pytest.raises(ValueError, match=message):
        store.create_job(mutate(job_record(30)))
    assert store.list_jobs(include_hidden=True) == []
    assert snapshot(store_uri) == before


def test_deeply_nested_data_is_refused(store):
    deep: dict = {}
    cursor = deep
    for _ in range(120):
        cursor["d"] = {}
        cursor = cursor["d"]
    with pytest.raises(ValueError, match="nested"):
        store.create_job(job_record(31, data=deep))
    assert store.list_jobs() == []


@pytest.mark.parametrize("bad_entry, message", [
    ({"name": "run", "date": "yesterday", "data": None}, "date"),
    ({"name": "", "date": T0, "data": None}, "name"),
    ({"name": "run", "date": T0, "data": ["not", "a", "dict"]}, "data"),
    ({"name": "run", "date": T0, "data": None, "key": 7}, "key"),
    ({"name": "run", "date": "2023-02-29T00:00:00.000Z", "data": None}, "date"),
    ({"name": "run", "date": T0 + "\n", "data": None}, "date"),
    ({"name": "run", "date": "2024-01-01T00:00:00.000", "data": None}, "date"),
    ({"name": "run", "date": "2024-01-01T24:00:00.000Z", "data": None}, "date"),
    ({"name": "run", "date": "٢٠٢٤-01-01T00:00:00.000Z", "data": None}, "date"),
    ("run", "dict"),
])
def test_bad_history_entries_are_refused_and_nothing_changes(store, store_uri, bad_entry, message):
    record = job_record(32)
    store.create_job(record)
    before = snapshot(store_uri)
    with pytest.raises(ValueError, match=message):
        store.commit_event(record["uuid"], "CREATED", "RUNNING", bad_entry)
    assert snapshot(store_uri) == before
    assert store.get_job(record["uuid"]) == record


def test_bad_query_and_delete_arguments(store):
    with pytest.raises(ValueError, match="limit"):
        store.list_jobs(limit=0)
    with pytest.raises(ValueError, match="limit"):
        store.list_jobs(limit="10")
    with pytest.raises(ValueError, match="state"):
        store.list_jobs(state=["CREATED"])
    with pytest.raises(ValueError, match="job uuid"):
        store.get_job(None)
    record = job_record(33)
    store.create_job(record)
    with pytest.raises(ValueError, match="force"):
        store.delete_job(record["uuid"], force="yes")
    with pytest.raises(ValueError, match="only_if_revision"):
        store.delete_job(record["uuid"], only_if_revision="1")
    assert store.get_job(record["uuid"]) == record


# --- lifecycle and connection errors -----------------------------------------------------------

def test_ping_and_close(store_uri):
    store = open_store(store_uri)
    store.ping()
    store.close()
    store.close()  # closing twice is harmless
    with pytest.raises(StoreUnavailable):
        store.ping()


def test_unreachable_mongo_raises_store_unavailable_with_the_password_masked():
    uri = f"mongodb://reactor:Sup3rS3cretPw@127.0.0.1:{closed_port()}/reactor_test"
    with pytest.raises(StoreUnavailable) as caught:
        open_store(uri, server_selection_timeout_ms=300)
    message = str(caught.value)
    assert "Sup3rS3cretPw" not in message
    assert "mongodb://reactor:***@127.0.0.1" in message


@pytest.mark.parametrize("options, message", [
    ({"write_concern": 0}, "write_concern"),
    ({"write_concern": "banana"}, "write_concern"),
    ({"journal": "yes"}, "journal"),
    ({"server_selection_timeout_ms": 0}, "server_selection_timeout_ms"),
    ({"database": ""}, "database"),
])
def test_bad_mongo_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        open_store(f"mongodb://127.0.0.1:{closed_port()}/x", **options)


def test_invalid_mongo_uri_is_refused_with_the_password_masked():
    with pytest.raises(ValueError) as caught:
        open_store("mongodb://user:Pw0rdXyz@host:notaport/db")
    assert "Pw0rdXyz" not in str(caught.value)


def test_mongo_options_select_database_and_write_concern(mongo_uri):
    name = "t_" + _uuid.uuid4().hex[:16]
    scheme, rest = mongo_uri.rstrip("/").split("://", 1)
    no_db = f"{scheme}://{rest.partition('/')[0]}/"
    store = open_store(no_db, database=name, write_concern="1", journal=False)
    try:
        assert store.database == name
        store.add_pipeline({"uuid": PIPELINE, "name": "p"})
        client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=3000)
        try:
            assert client[name].pipelines.count_documents({"uuid": PIPELINE}) == 1
        finally:
            client.drop_database(name)
            client.close()
    finally:
        store.close()


# --- SQLite specifics --------------------------------------------------------------------------

@pytest.mark.parametrize("uri", ["sqlite://relative.db", "sqlite:///", "sqlite:relative.db"])
def test_bad_sqlite_uris_are_refused(uri):
    with pytest.raises(ValueError, match="sqlite:///"):
        open_store(uri)


def test_sqlite_creates_the_directory_and_persists_across_opens(tmp_path):
    uri = f"sqlite:///{tmp_path / 'deep' / 'er' / 'reactor.db'}"
    record = job_record(40)
    with open_store(uri) as first:
        first.create_job(record)
    with open_store(uri) as second:
        assert second.get_job(record["uuid"]) == record
    conn = sqlite3.connect(tmp_path / "deep" / "er" / "reactor.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_sqlite_two_stores_on_one_file_see_each_others_commits(sqlite_uri):
    record = job_record(41)
    with open_store(sqlite_uri) as a, open_store(sqlite_uri) as b:
        a.create_job(record)
        assert b.commit_event(record["uuid"], "CREATED", "RUNNING", entry("run"))
        assert a.commit_event(record["uuid"], "CREATED", "RUNNING", entry("run")) is None
        assert a.get_job(record["uuid"])["revision"] == 2


def test_sqlite_persistent_lock_is_store_unavailable_and_nothing_is_written(sqlite_uri):
    from reactor.store.sqlite import SqliteJobStore

    store = SqliteJobStore(sqlite_uri, busy_timeout_s=0.05, lock_attempts=2)
    holder = sqlite3.connect(sqlite_uri[len("sqlite:///"):], isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="locked"):
            store.create_job(job_record(42))
        holder.execute("ROLLBACK")
        assert store.list_jobs() == []
        assert store.create_job(job_record(42))[1] is True
    finally:
        holder.close()
        store.close()


def _raw(sqlite_uri: str, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(sqlite_uri[len("sqlite:///"):])
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_sqlite_layout_history_rows_and_a_body_never_rewritten_by_events(sqlite_uri):
    record = job_record(43)
    with open_store(sqlite_uri) as store:
        store.create_job(record)
        (body,), = _raw(sqlite_uri, "SELECT body FROM jobs WHERE uuid = ?", (record["uuid"],))
        assert "history" not in json.loads(body)
        for n in range(5):
            store.commit_event(record["uuid"], "CREATED", "CREATED", entry(key=f"k{n}"))
        assert _raw(sqlite_uri, "SELECT body FROM jobs WHERE uuid = ?",
                    (record["uuid"],)) == [(body,)]
        rows = _raw(sqlite_uri, "SELECT key, body FROM history WHERE job_uuid = ? ORDER BY seq",
                    (record["uuid"],))
        assert [(k, json.loads(b)) for k, b in rows] == [
            (h.get("key"), h) for h in store.get_job(record["uuid"])["history"]]
        assert _raw(sqlite_uri, "SELECT state, revision, last_event, updated FROM jobs") == [
            ("CREATED", 6, "update", "2024-01-01T00:00:01.000Z")]
    assert _raw(sqlite_uri, "PRAGMA user_version") == [(2,)]


def test_sqlite_hard_delete_removes_the_history_rows(sqlite_uri):
    gone, kept = job_record(44), job_record(45)
    with open_store(sqlite_uri) as store:
        for r in (gone, kept):
            store.create_job(r)
            store.commit_event(r["uuid"], "CREATED", "RUNNING", entry("run", key="same-key"))
        assert store.delete_job(gone["uuid"], force=False) is True
        assert len(_raw(sqlite_uri, "SELECT * FROM history WHERE job_uuid = ?",
                        (gone["uuid"],))) == 2  # hiding keeps them
        assert store.delete_job(gone["uuid"]) is True
        assert _raw(sqlite_uri, "SELECT * FROM history WHERE job_uuid = ?", (gone["uuid"],)) == []
        assert len(_raw(sqlite_uri, "SELECT * FROM history WHERE job_uuid = ?",
                        (kept["uuid"],))) == 2
        # the uuid is free again: a new job under it starts with its own history only
        assert store.create_job(gone) == (gone, True)
        assert store.commit_event(gone["uuid"], "CREATED", "RUNNING",
                                  entry("run", key="same-key"))["revision"] == 2


def test_sqlite_file_that_is_not_a_database_is_a_store_error(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an sqlite database, not even close" * 100)
    with pytest.raises(StoreError):
        open_store(f"sqlite:///{path}")
