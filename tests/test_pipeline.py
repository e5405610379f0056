"""The pipeline against both real store backends: every outcome, and what it does to records
(hostile input at the contract: test_pipeline_contract.py)."""
from __future__ import annotations

import json

import pytest

from pipeline_helpers import event, new_job, send
from reactor.contract import schemas
from reactor.engine.jobs import Jobs
from reactor.domain.outcomes import REJECT_REASONS
from reactor.engine.pipeline import Pipeline

UNKNOWN_JOB = "107ffff0-0000-5000-8000-000000000000"


@pytest.fixture
def pipeline(jobs):
    return Pipeline(jobs)


def test_an_event_is_applied_and_recorded(jobs, pipeline):
    uuid, token = new_job(jobs)
    outcome = send(pipeline, event(uuid, "run", token, data={"msg": "running"}))
    assert (outcome.label, outcome.job_uuid, outcome.event, outcome.state) == \
        ("applied", uuid, "run", "RUNNING")
    record = jobs.get(uuid)
    assert (record["state"], record["last_event"], record["revision"]) == ("RUNNING", "run", 2)
    entry = record["history"][-1]
    assert (entry["name"], entry["data"], entry["key"]) == ("run", {"msg": "running"},
                                                             outcome.key)
    assert schemas.errors("job", record) == []


def test_event_names_are_case_insensitive_and_stored_lower_case(jobs, pipeline):
    uuid, token = new_job(jobs)
    assert send(pipeline, event(uuid, "FiNiSh", token)).reason == "invalid_transition"
    assert send(pipeline, event(uuid, "RUN", token)).label == "applied"
    assert jobs.get(uuid)["history"][-1]["name"] == "run"


def test_the_same_message_twice_gives_one_history_entry(jobs, pipeline):
    uuid, token = new_job(jobs)
    message = event(uuid, "update", token, data={"progress": 50})
    first, second = send(pipeline, message), send(pipeline, message)
    assert (first.label, second.label) == ("applied", "duplicate")
    assert first.key == second.key
    assert len(jobs.get(uuid)["history"]) == 2


def test_the_same_body_with_different_message_ids_is_two_events(jobs, pipeline):
    uuid, token = new_job(jobs)
    message = event(uuid, "update", token, data={"progress": 50})
    labels = [send(pipeline, message, message_id=m).label for m in ("m-1", "m-2", "m-1")]
    assert labels == ["applied", "applied", "duplicate"]
    history = jobs.get(uuid)["history"]
    assert [h["key"] for h in history[1:]] == ["id:m-1", "id:m-2"]


def test_a_redelivered_message_is_a_duplicate_even_after_the_state_moved_on(jobs, pipeline):
    uuid, token = new_job(jobs)
    run = event(uuid, "run", token)
    send(pipeline, run)
    send(pipeline, event(uuid, "finish", token))
    outcome = send(pipeline, run)
    assert (outcome.label, outcome.state) == ("duplicate", "FINISHED")
    assert len(jobs.get(uuid)["history"]) == 3


def test_apply_without_history_still_tells_a_redelivery_from_a_new_event(jobs):
    """The hot path reads and returns records without their history: the compare-and-set's
    key check finds the duplicate, and the re-read with history confirms it."""
    uuid, token = new_job(jobs)
    first = jobs.apply(uuid, "run", token=token, key="id:a", with_history=False)
    assert first.applied and "history" not in first.record
    update = jobs.apply(uuid, "update", {"n": 1}, token=token, key="id:b",
                        record=jobs.get(uuid, with_history=False), with_history=False)
    assert update.applied and update.record["revision"] == 3
    again = jobs.apply(uuid, "update", {"n": 1}, token=token, key="id:b",
                       record=jobs.get(uuid, with_history=False), with_history=False)
    assert again.duplicate and again.record["revision"] == 3
    assert [h.get("key") for h in jobs.get(uuid)["history"]] == [None, "id:a", "id:b"]


class CountingStore:
    """The real store, counting the job reads the pipeline makes."""

    def __init__(self, store):
        self.store, self.reads, self.history_reads = store, 0, 0

    def get_job(self, uuid, include_hidden=False, with_history=True):
        self.reads += 1
        self.history_reads += with_history
        return self.store.get_job(uuid, include_hidden, with_history)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_job_is_read_once_then_its_state_is_remembered(jobs):
    uuid, token = new_job(jobs)
    counting = CountingStore(jobs.store)
    pipeline = Pipeline(Jobs(counting, jobs.authority))
    labels = [send(pipeline, event(uuid, name, token)).label
              for name in ("run", "update", "finish", "index")]
    assert labels == ["applied"] * 4 and counting.reads == 1
    assert jobs.get(uuid)["state"] == "INDEXING"


def test_a_remembered_state_is_checked_not_trusted(jobs, pipeline):
    """Another writer moves the job after the pipeline saw it: the compare-and-set misses and
    the job is re-read, so each event gets the outcome the true state gives it."""
    uuid, token = new_job(jobs)
    run = event(uuid, "run", token)
    assert send(pipeline, run).state == "RUNNING"  # remembered: RUNNING
    jobs.apply(uuid, "finish", token=token)        # elsewhere: RUNNING → FINISHED
    stale = send(pipeline, event(uuid, "update", token))  # fits RUNNING, not FINISHED
    assert (stale.label, stale.state) == ("rejected:invalid_transition", "FINISHED")
    fresh = send(pipeline, event(uuid, "index", token))   # fits FINISHED only
    assert (fresh.label, fresh.state) == ("applied", "INDEXING")
    jobs.apply(uuid, "indexed", token=token)       # elsewhere: INDEXING → FINISHED
    again = send(pipeline, run)                    # a redelivery, the state long moved on
    assert (again.label, again.state) == ("duplicate", "FINISHED")
    assert [h["name"] for h in jobs.get(uuid)["history"]] == \
        ["create", "run", "finish", "index", "indexed"]


def test_a_stale_remembered_state_costs_a_read_without_history(jobs):
    """The guess missed because the job moved: the job is read again without its history
    (which only a possible duplicate needs) and the event applies from the state it is in."""
    uuid, token = new_job(jobs)
    counting = CountingStore(jobs.store)
    pipeline = Pipeline(Jobs(counting, jobs.authority))
    assert send(pipeline, event(uuid, "update", token)).state == "CREATED"  # remembered
    jobs.apply(uuid, "run", token=token)  # elsewhere: CREATED → RUNNING
    outcome = send(pipeline, event(uuid, "update", token, data={"n": 2}))
    assert (outcome.label, outcome.state) == ("applied", "RUNNING")
    assert (counting.reads, counting.history_reads) == (2, 0)
    assert [h["name"] for h in jobs.get(uuid)["history"]] == ["create", "update", "run", "update"]


def test_a_job_hidden_after_it_was_remembered_is_unknown(jobs, pipeline):
    uuid, token = new_job(jobs)
    send(pipeline, event(uuid, "run", token))
    jobs.store.delete_job(uuid, force=False)  # elsewhere: hidden
    outcome = send(pipeline, event(uuid, "update", token))
    assert outcome.label == "rejected:unknown_job"
    hidden = jobs.store.get_job(uuid, include_hidden=True)
    assert (hidden["state"], hidden["revision"]) == ("RUNNING", 2)


def _rejections(uuid, token, other_token):
    return {
        "too_large": (json.dumps(event(uuid, "update", token)).encode() + b" " * 262144, None),
        "decode_error": (b'{"uuid": "' + uuid.encode() + b'", "name": "run"', None),
        "schema_invalid": (event(uuid, "run", token, data="not an object"), None),
        "unknown_event": (event(uuid, "launch", token), None),
        "unknown_job": (event(UNKNOWN_JOB, "run", token), None),
        "auth_failed": (event(uuid, "run", other_token), None),
        "invalid_transition": (event(uuid, "finish", token), None),
    }


@pytest.mark.parametrize("reason", REJECT_REASONS)
def test_each_rejection_leaves_the_record_unchanged(jobs, pipeline, reason):
    uuid, token = new_job(jobs)
    _, other_token = new_job(jobs, n=2)
    before = jobs.get(uuid)
    message, params = _rejections(uuid, token, other_token)[reason]
    outcome = send(pipeline, message, params)
    assert (outcome.kind, outcome.reason) == ("rejected", reason)
    assert outcome.detail
    assert token not in outcome.to_json() and other_token not in outcome.to_json()
    assert jobs.get(uuid) == before


def test_an_invalid_transition_names_event_state_and_allowed_events(jobs, pipeline):
    uuid, token = new_job(jobs)
    send(pipeline, event(uuid, "run", token))
    send(pipeline, event(uuid, "finish", token))
    outcome = send(pipeline, event(uuid, "run", token, data={"attempt": 2}))
    assert (outcome.label, outcome.state, outcome.event) == \
        ("rejected:invalid_transition", "FINISHED", "run")
    assert "'run'" in outcome.detail and "FINISHED" in outcome.detail
    for allowed in ("finish", "index", "indexed", "validate", "retire", "reset"):
        assert allowed in outcome.detail


def test_a_schema_error_reports_path_and_rule(jobs, pipeline):
    uuid, token = new_job(jobs)
    outcome = send(pipeline, event(uuid, "run", token, data=[1]))
    assert outcome.label == "rejected:schema_invalid"
    assert outcome.detail.startswith("$.data:") and "(rule: type)" in outcome.detail
    assert (outcome.job_uuid, outcome.event) == (uuid, "run")


def test_reset_and_ready_need_an_admin_token(jobs, pipeline):
    uuid, token = new_job(jobs)
    admin = jobs.authority.admin_token()
    assert send(pipeline, event(uuid, "reset", token)).label == "rejected:auth_failed"
    assert send(pipeline, event(uuid, "reset", admin)).state == "RESET"
    assert send(pipeline, event(uuid, "ready", token)).label == "rejected:auth_failed"
    assert send(pipeline, event(uuid, "ready", admin)).state == "CREATED"


def test_a_token_parameter_is_used_only_when_the_body_has_none(jobs, pipeline):
    uuid, token = new_job(jobs)
    outcome = send(pipeline, {"uuid": uuid, "name": "run", "token": "wrong"}, {"token": token})
    assert outcome.label == "rejected:auth_failed"
    assert send(pipeline, {"uuid": uuid, "name": "run"}, {"token": token}).label == "applied"


AGAVE = {"id": "4426496373599374866-242ac11b-0001-007", "appId": "tacobot-0.1.0",
         "owner": "sd2eadm", "lastStatusMessage": "Job started",
         "_links": {"self": {"href": "https://api.example/jobs/v2/4426"}}}


def test_a_running_callback_keeps_the_job_json_without_links(jobs, pipeline):
    uuid, token = new_job(jobs)
    outcome = send(pipeline, {**AGAVE, "status": "RUNNING"}, {"uuid": uuid, "token": token})
    assert (outcome.label, outcome.event, outcome.state) == ("applied", "run", "RUNNING")
    data = jobs.get(uuid)["history"][-1]["data"]
    assert data == {k: v for k, v in AGAVE.items() if k != "_links"} | {"status": "RUNNING"}


def test_other_callbacks_keep_status_and_job_id(jobs, pipeline):
    uuid, token = new_job(jobs)
    send(pipeline, {**AGAVE, "status": "RUNNING"}, {"uuid": uuid, "token": token})
    outcome = send(pipeline, {**AGAVE, "status": "KILLED", "lastStatusMessage": "killed"},
                   {"uuid": uuid, "token": token})
    assert (outcome.event, outcome.state) == ("fail", "FAILED")
    assert jobs.get(uuid)["history"][-1]["data"] == {"status": "KILLED", "id": AGAVE["id"],
                                                     "message": "killed"}


def test_a_status_parameter_with_an_empty_body_is_a_callback(jobs, pipeline):
    uuid, token = new_job(jobs)
    outcome = send(pipeline, b"", {"uuid": uuid, "token": token, "status": "finished"})
    assert outcome.label == "rejected:invalid_transition"  # FINISHED → finish, from CREATED
    outcome = send(pipeline, b"", {"uuid": uuid, "token": token, "status": "RUNNING"})
    assert (outcome.label, outcome.state) == ("applied", "RUNNING")


def test_a_parameter_only_event_records_its_note(jobs, pipeline):
    uuid, token = new_job(jobs)
    outcome = send(pipeline, b"", {"uuid": uuid, "event": "Update", "token": token,
                                   "note": "inputs checked"})
    assert (outcome.label, outcome.event) == ("applied", "update")
    assert jobs.get(uuid)["history"][-1]["data"] == {"note": "inputs checked"}


def test_a_hard_delete_removes_the_job_and_a_redelivery_is_a_duplicate(jobs, pipeline):
    uuid, token = new_job(jobs)
    admin = jobs.authority.admin_token()
    message = {"uuid": uuid, "action": "delete", "force": True, "token": admin}
    assert send(pipeline, {**message, "token": token}).label == "rejected:auth_failed"
    assert jobs.store.get_job(uuid) is not None
    first, second = send(pipeline, message), send(pipeline, message)
    assert (first.label, first.event, second.label) == ("applied", "delete", "duplicate")
    assert jobs.store.get_job(uuid, include_hidden=True) is None
    other = send(pipeline, {**message, "force": False})  # a different delete: the job is gone
    assert other.label == "rejected:unknown_job"


def test_a_soft_delete_hides_the_job(jobs, pipeline):
    uuid, _ = new_job(jobs)
    admin = jobs.authority.admin_token()
    outcome = send(pipeline, {"uuid": uuid, "action": "delete", "token": admin})
    assert outcome.label == "applied" and "hidden" in outcome.detail
    assert jobs.store.get_job(uuid) is None
    assert jobs.store.get_job(uuid, include_hidden=True)["state"] == "CREATED"


def test_operator_and_dotted_keys_are_data(jobs, pipeline):
    uuid, token = new_job(jobs)
    data = {"$set": {"state": "FINISHED"}, "a.b": {"$inc": {"revision": 5}}, "$": ".", "": 0}
    assert send(pipeline, event(uuid, "update", token, data=data)).label == "applied"
    record = jobs.get(uuid)
    assert (record["state"], record["revision"]) == ("CREATED", 2)
    assert record["history"][-1]["data"] == data


def test_a_store_that_stays_locked_is_a_retry_and_changes_nothing(tmp_path, authority):
    import sqlite3

    from reactor.domain.identifiers import pipeline_uuid
    from reactor.engine.jobs import Jobs
    from reactor.store.sqlite import SqliteJobStore

    uri = f"sqlite:///{tmp_path / 'locked.db'}"
    store = SqliteJobStore(uri, busy_timeout_s=0.05, lock_attempts=1)
    jobs = Jobs(store, authority)
    jobs.pipeline_uuid = pipeline_uuid("p")
    store.add_pipeline({"uuid": jobs.pipeline_uuid, "name": "p"})
    uuid, token = new_job(jobs)
    holder = sqlite3.connect(str(tmp_path / "locked.db"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        outcome = send(Pipeline(jobs), event(uuid, "run", token))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (outcome.kind, outcome.reason) == ("retry", "store_unavailable")
    assert jobs.get(uuid)["state"] == "CREATED"
    assert send(Pipeline(jobs), event(uuid, "run", token)).label == "applied"
    store.close()


@pytest.mark.parametrize("body, reason, where", [
    (b"null", "schema_invalid", "not null"),
    (b"[]", "schema_invalid", "not array"),
    (b"   ", "decode_error", "message is empty"),
    (b"{\"a\": NaN}", "decode_error", "NaN"),
    (b"[" * 100 + b"]" * 100, "decode_error", "nested deeper"),
    (b"{\"a\": 1, \"a\": 2}", "decode_error", "duplicate key"),
])
def test_bodies_that_are_not_messages(pipeline, body, reason, where):
    outcome = send(pipeline, body)
    assert (outcome.kind, outcome.reason) == ("rejected", reason)
    assert where in outcome.detail


def test_the_size_limit_is_configurable(jobs):
    uuid, token = new_job(jobs)
    body = json.dumps(event(uuid, "run", token)).encode()
    assert send(Pipeline(jobs, max_bytes=len(body)), body).label == "applied"
    assert send(Pipeline(jobs, max_bytes=len(body) - 1), body).label == "rejected:too_large"
    with pytest.raises(ValueError, match="max_bytes"):
        Pipeline(jobs, max_bytes=0)
