"""Typed identifiers: deterministic job uuids (107), pipeline uuids (106), random event uuids (108)."""
from __future__ import annotations

import re
import uuid as _uuid

import pytest

from reactor.domain import identifiers
from reactor.domain.identifiers import check_typed, history_uuid, job_uuid, pipeline_uuid, typed_uuid

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PIPE = pipeline_uuid("tacobot")
OTHER_PIPE = pipeline_uuid("burritobot")
EXPERIMENT = typed_uuid("experiment", "experiment.tacc.20001")
SAMPLE = typed_uuid("sample", "sample.tacc.abc")


def test_typed_uuid_is_uuid5_in_the_catalog_namespace_with_the_kind_prefix():
    namespace = _uuid.uuid3(_uuid.NAMESPACE_DNS, "sd2e.org")
    plain = str(_uuid.uuid5(namespace, "some text"))
    assert typed_uuid("file", "some text") == "105" + plain[3:]
    assert typed_uuid("pipelinejob", "some text") == "107" + plain[3:]


def test_pipeline_uuid_is_deterministic_from_the_name():
    assert PIPE == pipeline_uuid("tacobot")
    assert PIPE.startswith("106") and UUID_RE.match(PIPE)
    assert pipeline_uuid("tacobot ") != PIPE


def test_job_uuid_same_inputs_same_uuid():
    a = job_uuid(PIPE, [EXPERIMENT], {"x": 1, "y": [1, 2]})
    b = job_uuid(PIPE, [EXPERIMENT], {"y": [1, 2], "x": 1})  # key order is irrelevant
    assert a == b
    assert a.startswith("107") and UUID_RE.match(a)


def test_job_uuid_follows_the_replaced_systems_derivation():
    # Rendered values, sorted, joined with ':' (dicts as compact sorted JSON, others as str()).
    data = {"b": 2, "a": 1}
    parts = sorted([PIPE, str([EXPERIMENT]), '{"a":1,"b":2}'])
    assert job_uuid(PIPE, [EXPERIMENT], data) == typed_uuid("pipelinejob", ":".join(parts))


@pytest.mark.parametrize("change", [
    {"pipeline": OTHER_PIPE},
    {"child_of": [SAMPLE]},
    {"child_of": [EXPERIMENT, SAMPLE]},
    {"child_of": []},
    {"data": {"x": 2}},
    {"data": {"x": 1, "extra": None}},
    {"data": {}},
])
def test_any_change_of_input_changes_the_uuid(change):
    base = {"pipeline": PIPE, "child_of": [EXPERIMENT], "data": {"x": 1}}
    changed = {**base, **change}
    assert job_uuid(base["pipeline"], base["child_of"], base["data"]) != \
        job_uuid(changed["pipeline"], changed["child_of"], changed["data"])


def test_missing_child_of_and_data_mean_empty():
    assert job_uuid(PIPE) == job_uuid(PIPE, [], {}) == job_uuid(PIPE, None, None)


def test_history_uuids_are_random_and_prefixed_108():
    seen = {history_uuid() for _ in range(50)}
    assert len(seen) == 50
    assert all(u.startswith("108") and UUID_RE.match(u) for u in seen)


def test_check_typed_accepts_the_right_kind():
    assert check_typed(PIPE, "pipeline") == PIPE


@pytest.mark.parametrize("value, kind, words", [
    (PIPE, "pipelinejob", "must start with 107"),
    (PIPE.upper(), "pipeline", "lower-case UUID"),
    ("106", "pipeline", "lower-case UUID"),
    (None, "pipeline", "lower-case UUID"),
    (12, "pipeline", "lower-case UUID"),
    (PIPE + " ", "pipeline", "lower-case UUID"),
    (PIPE + "\n", "pipeline", "lower-case UUID"),  # "$" of a regex matches before a final \n
    ("\n" + PIPE, "pipeline", "lower-case UUID"),
])
def test_check_typed_names_the_problem(value, kind, words):
    with pytest.raises(ValueError) as info:
        check_typed(value, kind)
    assert words in str(info.value)


def test_check_typed_never_echoes_a_token_sent_in_the_uuid_slot():
    token = "58901ef6c7e874b7c0a273d1a9152e79"
    with pytest.raises(ValueError) as info:
        check_typed(token, "pipelinejob")
    assert token not in str(info.value) and "a string of 32 characters" in str(info.value)


@pytest.mark.parametrize("value", [PIPE, typed_uuid("sample", "s1"), typed_uuid("pipelinejob", "j")])
def test_check_any_typed_accepts_every_known_kind(value):
    assert identifiers.check_any_typed(value, "child_of") == value


@pytest.mark.parametrize("value", ['{"$ne": null}', "999" + PIPE[3:], PIPE + "\n", None, 5, ""])
def test_check_any_typed_refuses_anything_else_naming_the_field(value):
    with pytest.raises(ValueError) as info:
        identifiers.check_any_typed(value, "child_of")
    assert str(info.value).startswith("child_of")


def test_prefixes_are_distinct():
    assert len(set(identifiers.PREFIXES.values())) == len(identifiers.PREFIXES)
    assert identifiers.JOB_PREFIX == "107" and identifiers.EVENT_PREFIX == "108"


@pytest.mark.parametrize("text", ["", "a", "sd2e.org", "ü" * 40, "x" * 1000, "\x00\U0001f600"])
def test_typed_uuid_is_the_standard_uuid5_with_the_prefix(text):
    import uuid

    for kind, prefix in identifiers.PREFIXES.items():
        expected = prefix + str(uuid.uuid5(identifiers.NAMESPACE, text))[3:]
        assert identifiers.typed_uuid(kind, text) == expected
