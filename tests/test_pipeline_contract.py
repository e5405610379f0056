"""Hostile input at the message contract, through the pipeline on both store backends: each
message refused with its reason, the record unchanged."""
from __future__ import annotations

import pytest

from pipeline_helpers import event, new_job, send
from reactor.engine.pipeline import Pipeline


@pytest.fixture
def pipeline(jobs):
    return Pipeline(jobs)


def _unchanged(jobs, uuid, before):
    assert jobs.get(uuid) == before


def test_a_create_message_for_an_existing_job_is_an_invalid_transition(jobs, pipeline):
    """create is recorded once, by creating the job: as message it never adds a second entry."""
    uuid, token = new_job(jobs)
    before = jobs.get(uuid)
    outcome = send(pipeline, event(uuid, "create", token))
    assert outcome.label == "rejected:invalid_transition"
    assert "recorded once" in outcome.detail
    _unchanged(jobs, uuid, before)


@pytest.mark.parametrize("name", [" run", "run ", "run\n", "run\u00a0", "\u2003run", "ｒｕｎ"])
def test_white_space_or_unicode_around_an_event_name_is_unknown(jobs, pipeline, name):
    """Names match ignoring ASCII case only; nothing is stripped or folded silently."""
    uuid, token = new_job(jobs)
    before = jobs.get(uuid)
    assert send(pipeline, event(uuid, name, token)).label == "rejected:unknown_event"
    assert send(pipeline, b"", {"uuid": uuid, "event": name, "token": token}).label == \
        "rejected:unknown_event"
    _unchanged(jobs, uuid, before)
    assert send(pipeline, event(uuid, "RuN", token)).label == "applied"


@pytest.mark.parametrize("status", ["FINISHED\n", "\nFINISHED", "FINISHED ", "RUNNING\r\n"])
def test_a_status_with_white_space_is_schema_invalid_as_body_or_parameter(jobs, pipeline,
                                                                          status):
    uuid, token = new_job(jobs)
    before = jobs.get(uuid)
    for outcome in (send(pipeline, {"status": status}, {"uuid": uuid, "token": token}),
                    send(pipeline, b"{}", {"uuid": uuid, "token": token, "status": status})):
        assert outcome.label == "rejected:schema_invalid"
    _unchanged(jobs, uuid, before)


@pytest.mark.parametrize("name", ["uuid", "token", "event", "status", "note"])
def test_parameters_that_are_not_utf8_are_a_decode_error_not_a_bug(jobs, pipeline, name):
    """Environment bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape)."""
    uuid, token = new_job(jobs)
    before = jobs.get(uuid)
    params = {"uuid": uuid, "token": token, "event": "update", name: "bad\udcff"}
    outcome = send(pipeline, b"", params)
    assert outcome.label == "rejected:decode_error"
    assert repr(name) in outcome.detail
    assert send(pipeline, b"", {**params, name: b"bad\xff"}).label == "rejected:decode_error"
    _unchanged(jobs, uuid, before)


def _nested(depth: int) -> dict:
    """A RUNNING job JSON nested ``depth`` levels deep (the body itself is level 1)."""
    body = inner = {"status": "RUNNING"}
    for _ in range(depth - 1):
        inner["x"] = {}
        inner = inner["x"]
    return body


def test_a_running_callback_must_fit_as_event_data(jobs, pipeline):
    """Its body becomes the event's data one level deeper: it must be valid there too, so a
    callback accepted here (or by ``reactor invoke``) is never refused once queued."""
    from reactor.domain.jsonvalues import MESSAGE_MAX_DEPTH as MAX_DEPTH

    uuid, token = new_job(jobs)
    params = {"uuid": uuid, "token": token}
    refused = send(pipeline, _nested(MAX_DEPTH), params)
    assert refused.label == "rejected:decode_error" and "63 levels" in refused.detail
    accepted = send(pipeline, _nested(MAX_DEPTH - 1), params)
    assert accepted.label == "applied"
    data = jobs.get(uuid)["history"][-1]["data"]
    assert send(pipeline, {"uuid": uuid, "name": "update", "token": token,
                           "data": data}).label == "applied"


def test_a_token_in_the_uuid_slot_is_never_echoed(jobs, pipeline):
    uuid, token = new_job(jobs)
    for outcome in (send(pipeline, {"uuid": token, "name": "update", "token": uuid}),
                    send(pipeline, {"status": "RUNNING"}, {"uuid": token, "token": uuid}),
                    send(pipeline, b"", {"uuid": token, "event": "run", "token": uuid}),
                    send(pipeline, {"uuid": uuid, "name": token, "token": token})):
        assert outcome.kind == "rejected"
        assert token not in outcome.to_json()
