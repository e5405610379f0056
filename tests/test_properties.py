"""Property tests: no input crashes the pipeline, and only valid, authorised events change jobs."""
from __future__ import annotations

import json
import uuid as _uuid

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reactor.domain.lifecycle import EVENT_NAMES
from reactor.contract.messages import PARAM_NAMES
from reactor.domain.outcomes import Kind, Outcome
from reactor.engine.pipeline import Item
from reactor.engine.pipeline import Pipeline

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
OTHER_JOB = "107ffff0-0000-5000-8000-000000000000"

scalars = (st.none() | st.booleans() | st.integers() | st.text(max_size=20)
           | st.floats(allow_nan=False, allow_infinity=False))

# Arrays hold anything, arrays directly inside arrays included: both stores keep them as given.
def _nest(inner, keys=st.text(max_size=8)):
    return st.dictionaries(keys, inner, max_size=4) | st.lists(inner, max_size=4)


json_values = st.recursive(scalars, _nest, max_leaves=15)
# Keys MongoDB would read as operators or paths, and keys that look like their escapes.
tricky_keys = st.sampled_from(["$set", "$inc", "$", ".", "a.b", "$where", "..", "$.x", "%24x",
                               "x%", "%2E", "", "é.ü", "$$", "a.$"]) | st.text(max_size=6)
tricky_data = st.recursive(scalars, lambda inner: _nest(inner, tricky_keys), max_leaves=12
                           ).map(lambda v: {"$v": v, "k.k": {"$x": v}})


@pytest.fixture
def world(jobs):
    """A pipeline and one job, with the tokens an attacker might or might not have."""
    record, _ = jobs.create(jobs.pipeline_uuid, data={"property": "tests"})
    uuid = record["uuid"]
    return {"jobs": jobs, "pipeline": Pipeline(jobs), "uuid": uuid,
            "token": jobs.authority.job_token(uuid), "admin": jobs.authority.admin_token()}


def check_one_outcome(outcome) -> None:
    assert isinstance(outcome, Outcome)
    assert outcome.kind in tuple(Kind)
    json.loads(outcome.to_json())


@SETTINGS
@given(body=st.binary(max_size=600),
       params=st.dictionaries(st.sampled_from(PARAM_NAMES), st.text(max_size=40), max_size=5))
def test_arbitrary_bytes_never_crash_and_never_change_a_job(world, body, params):
    jobs, uuid = world["jobs"], world["uuid"]
    if "uuid" in params and params["uuid"] == "":
        params["uuid"] = uuid  # aim some messages at the real job, with made-up tokens
    before = jobs.get(uuid)
    [outcome] = world["pipeline"].process([Item(body, None, params)])
    check_one_outcome(outcome)
    assert outcome.kind == Kind.REJECTED
    assert jobs.get(uuid) == before


def _messages(world):
    uuid = st.sampled_from([world["uuid"]] * 3 + [OTHER_JOB, "not-a-uuid"])
    token = st.sampled_from([world["token"]] * 2 + [world["admin"], "0dc73dc3ff39b49a", ""]) | \
        st.text(max_size=8)
    name = st.sampled_from(EVENT_NAMES + ("RUN", "Finish", "launch")) | st.text(max_size=8)
    objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
    event = st.fixed_dictionaries({"uuid": uuid, "name": name},
                                  optional={"token": token, "data": objects | json_values})
    delete = st.fixed_dictionaries({"uuid": uuid, "action": st.just("delete") | st.text(),
                                    "token": token}, optional={"force": json_values})
    callback = st.fixed_dictionaries({"status": st.sampled_from(["RUNNING", "FINISHED",
                                                                 "PENDING", "odd"]) | scalars},
                                     optional={"id": json_values, "_links": json_values})
    params = st.sampled_from([None, None, None]) | st.fixed_dictionaries({}, optional={
        "uuid": uuid, "token": token, "event": name, "status": st.sampled_from(["RUNNING"]),
        "note": st.text(max_size=10)})
    # Well-formed and mostly authorised, so that the "changes only when valid" side is tested.
    good = st.fixed_dictionaries({"uuid": st.just(world["uuid"]),
                                  "name": st.sampled_from(EVENT_NAMES),
                                  "token": st.sampled_from([world["token"], world["admin"],
                                                            "0dc73dc3ff39b49a"])},
                                 optional={"data": objects})
    junk = json_values | st.fixed_dictionaries({"uuid": uuid, "name": name, "x": json_values})
    return st.one_of(st.tuples(st.one_of(junk, event, delete, callback), params),
                     st.tuples(good, st.none()))


@SETTINGS
@given(data=st.data())
def test_arbitrary_json_gives_one_outcome_and_changes_only_with_a_valid_token(world, data):
    jobs, uuid = world["jobs"], world["uuid"]
    message, params = data.draw(_messages(world))
    body = json.dumps(message).encode()
    before = jobs.store.get_job(uuid, include_hidden=True)
    [outcome] = world["pipeline"].process([Item(body, None, params)])
    check_one_outcome(outcome)
    event(outcome.label)
    after = jobs.store.get_job(uuid, include_hidden=True)
    if after == before:
        assert outcome.kind != Kind.APPLIED or outcome.job_uuid != uuid or \
            outcome.event == "delete"
    else:
        # Something changed: only an applied, authorised message for this job may do that.
        assert (outcome.kind, outcome.job_uuid) == (Kind.APPLIED, uuid)
        sent = message.get("token") if isinstance(message, dict) and "token" in message \
            else (params or {}).get("token")
        assert sent in (world["token"], world["admin"])
        if after is not None and before is not None and outcome.event != "delete":
            assert after["revision"] == before["revision"] + 1
            assert after["history"][:-1] == before["history"]
            assert after["history"][-1]["key"] == outcome.key
    if after is None or not after.get("_visible", True) or after["state"] in (
            "FAILED", "REJECTED", "FINALIZED", "RETIRED", "RESET"):
        world.update(uuid=_recreate(world))  # keep most examples on a job that can still move


def _recreate(world) -> str:
    """A fresh job to continue on, once the current one is deleted or at rest."""
    jobs = world["jobs"]
    record, _ = jobs.create(jobs.pipeline_uuid, data={"property": _uuid.uuid4().hex})
    world["token"] = jobs.authority.job_token(record["uuid"])
    return record["uuid"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=tricky_data)
def test_operator_and_dotted_keys_are_stored_safely_and_read_back_equal(world, payload):
    jobs, uuid = world["jobs"], world["uuid"]
    body = json.dumps({"uuid": uuid, "name": "update", "token": world["token"],
                       "data": payload}).encode()
    [outcome] = world["pipeline"].process([Item(body, _uuid.uuid4().hex)])
    if outcome.kind == Kind.REJECTED:  # only what no store keeps identically is refused
        assert outcome.reason == "schema_invalid"
        assert "64 bits" in outcome.detail or "NUL" in outcome.detail
        return
    assert outcome.label == Kind.APPLIED, outcome.detail
    record = jobs.get(uuid)
    assert record["state"] == "CREATED"  # no key of the data acted as an operator
    assert record["history"][-1]["data"] == payload
    created, _ = jobs.create(jobs.pipeline_uuid, data=payload)
    assert jobs.get(created["uuid"])["data"] == payload
