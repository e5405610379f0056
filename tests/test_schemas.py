"""The message and record schemas: local files, generated enums, no network, clear errors."""
from __future__ import annotations

import json
import shutil
import socket

import pytest
from jsonschema import Draft202012Validator

from reactor.domain import lifecycle
from reactor.contract import messages
from reactor.contract import schemas
from reactor.domain.errors import ConfigError

JOB = "107be0e0-539b-5e47-b0b0-d39bb6b90f96"


@pytest.fixture
def fresh_caches():
    """Forget compiled schemas so a test really loads them (and leave them fresh after)."""
    caches = (schemas.load_documents, schemas.registry, schemas.validators,
              schemas.fast_validators)
    for cached in caches:
        cached.cache_clear()
    yield
    for cached in caches:
        cached.cache_clear()


@pytest.fixture
def no_network(monkeypatch):
    """Make every attempt to open a connection or resolve a name fail loudly, and record it."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during a test that forbids it")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_every_schema_file_is_2020_12_with_its_own_id():
    ids = set()
    for name in (schemas.DEFINITIONS, *schemas.SCHEMA_FILES.values()):
        doc = json.loads((schemas.schema_dir() / name).read_text())
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert doc["$id"] == schemas.BASE_ID + name
        Draft202012Validator.check_schema(doc)
        ids.add(doc["$id"])
    assert len(ids) == len(schemas.SCHEMA_FILES) + 1


def test_enums_in_the_files_are_the_lifecycle_table():
    doc = json.loads((schemas.schema_dir() / schemas.DEFINITIONS).read_text())
    assert doc["$defs"]["event_name"]["enum"] == list(lifecycle.EVENT_NAMES)
    assert doc["$defs"]["state_name"]["enum"] == list(lifecycle.STATE_NAMES)


def test_a_stale_enum_is_refused_at_load_and_regenerated_by_write(tmp_path, fresh_caches):
    folder = tmp_path / "schemas"
    shutil.copytree(schemas.schema_dir(), folder)
    path = folder / schemas.DEFINITIONS
    doc = json.loads(path.read_text())
    doc["$defs"]["event_name"]["enum"].remove("retire")
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="event_name"):
        schemas.validators(str(folder))
    schemas.write_enums(folder)
    schemas.load_documents.cache_clear()
    assert schemas.validators(str(folder))["event"].is_valid(
        {"uuid": JOB, "name": "retire"})


def test_loading_and_validating_never_touch_the_network(no_network, fresh_caches):
    compiled = schemas.validators()
    assert set(compiled) == set(schemas.SCHEMA_FILES)
    assert compiled["event"].is_valid({"uuid": JOB, "name": "run", "data": {"a": 1}})
    assert not compiled["event"].is_valid({"uuid": JOB, "name": "run", "extra": 1})
    assert compiled["callback"].is_valid({"parameters": {"uuid": JOB, "status": "RUNNING"},
                                          "body": {"id": "x"}})
    assert messages.parse(json.dumps({"uuid": JOB, "name": "RUN"}).encode()).event == "run"
    assert no_network == []


def test_an_unknown_reference_is_an_error_not_a_download(no_network, fresh_caches):
    from referencing.exceptions import Unresolvable

    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "$id": schemas.BASE_ID + "probe.json",
              "properties": {"x": {"$ref": "https://example.com/schemas/remote.json"}}}
    validator = Draft202012Validator(schema, registry=schemas.registry())
    with pytest.raises(Unresolvable):
        validator.validate({"x": 1})
    assert no_network == []


def test_validators_are_compiled_once_and_reused():
    assert schemas.validators() is schemas.validators()
    assert schemas.validator("event") is schemas.validators()["event"]


def test_python_m_reactor_schemas_checks_the_files():
    assert schemas.main([]) == 0


@pytest.mark.parametrize("instance, path, rule", [
    ({"uuid": JOB}, "$", "required"),
    ({"uuid": JOB, "name": "run", "data": []}, "$.data", "type"),
    ({"uuid": "106" + JOB[3:], "name": "run"}, "$.uuid", "pattern"),
    ({"uuid": JOB, "name": "run", "extra": 1}, "$", "additionalProperties"),
])
def test_schema_errors_name_the_json_path_and_the_rule(instance, path, rule):
    first = schemas.errors("event", instance)[0]
    detail = schemas.describe(first)
    assert detail.startswith(path + ":")
    assert f"(rule: {rule})" in detail


def test_a_schema_error_on_the_token_never_shows_the_token():
    secret = "s3cr3t-token-value-" + "z" * 300
    detail = schemas.describe(schemas.errors("event", {"uuid": JOB, "name": "run",
                                                       "token": secret})[0])
    assert "$.token" in detail and "maxLength" in detail
    assert "s3cr3t" not in detail


def _patterns(node, kind_path=()):
    """Every (schema file, pattern) in the loaded schema documents."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "pattern" and isinstance(v, str):
                yield v
            else:
                yield from _patterns(v)
    elif isinstance(node, list):
        for v in node:
            yield from _patterns(v)


@pytest.mark.parametrize("instance", [
    {"uuid": JOB + "\n", "name": "run"},
    {"parameters": {"uuid": JOB, "status": "FINISHED\n"}, "body": {}},
    {"parameters": {"uuid": JOB}, "body": {"status": "RUNNING\n"}},
])
def test_a_trailing_newline_breaks_a_pattern_in_both_engines(instance):
    """ECMA-262 "$" is the end of the text; Python's also matches before a final newline."""
    kind = "event" if "name" in instance else "callback"
    assert not schemas.fast_validators()[kind].is_valid(instance)
    errs = schemas.errors(kind, instance)
    assert errs and errs[0].validator == "pattern"
    assert "\\n" in schemas.describe(errs[0])  # the harmless value is shown, escaped


def test_every_pattern_of_the_schemas_ends_with_the_text():
    patterns = set(_patterns(schemas.load_documents()))
    assert patterns
    for pattern in patterns:
        assert pattern.startswith("^") and pattern.endswith("$"), pattern
        assert schemas._compiled(pattern).pattern.endswith(r"\Z"), pattern


@pytest.mark.parametrize("field", ["uuid", "name", "data"])
def test_a_schema_error_never_echoes_a_token_in_any_field(field):
    token = "58901ef6c7e874b7c0a273d1a9152e79"
    instance = {"uuid": JOB, "name": "run", field: token}
    detail = schemas.describe(schemas.errors("event", instance)[0])
    assert token not in detail and detail.startswith(f"$.{field}:")


def test_an_unexpected_field_named_like_a_token_is_not_echoed():
    token = "58901ef6c7e874b7c0a273d1a9152e79"
    detail = schemas.describe(schemas.errors("event", {"uuid": JOB, "name": "run",
                                                       token: 1})[0])
    assert token not in detail and "unexpected field" in detail


def test_the_job_record_schema_accepts_a_new_record():
    from reactor.domain.records import new_job_record, now_iso
    from reactor.domain.identifiers import pipeline_uuid

    record = new_job_record(uuid=JOB, pipeline_uuid=pipeline_uuid("p"), data={"a": 1},
                            date=now_iso())
    assert schemas.errors("job", record) == []
    record["state"] = "DONE"
    assert schemas.describe(schemas.errors("job", record)[0]).startswith("$.state:")


@pytest.mark.parametrize("status, event", [
    ("RUNNING", "run"), ("FINISHED", "finish"), ("FAILED", "fail"), ("STOPPED", "fail"),
    ("KILLED", "fail"), ("DELETED", "fail"), ("ARCHIVING_FAILED", "fail"),
    ("HEARTBEAT", "update"), ("UPDATED", "update"), ("PENDING", "resource"),
    ("QUEUED", "resource"), ("STAGING_INPUTS", "resource"), ("ARCHIVING", "resource"),
    ("SOMETHING_NEW", "update"), ("running", "run"),
])
def test_status_to_event_map(status, event):
    message = messages.parse(json.dumps({"status": status, "id": "j-1"}).encode(),
                             {"uuid": JOB, "token": "t"})
    assert (message.kind, message.event) == ("callback", event)
    assert message.data["status"] == status.upper()


def test_inlined_fast_validators_agree_with_the_referencing_ones():
    """The hot-path validators (refs inlined) accept exactly what the originals accept."""
    from hypothesis import given, settings, strategies as st

    from reactor.contract import schemas

    good = {"uuid": "107b93f3-1eae-5e79-8a18-0a480f8aa3a5", "name": "run", "token": "t" * 32}
    values = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=40),
                       st.just("RUN"), st.just("run"), st.just(good["uuid"]),
                       st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
    docs = st.dictionaries(st.sampled_from(["uuid", "name", "token", "data", "action", "force",
                                            "status", "id", "extra"]), values, max_size=6)

    @settings(max_examples=300, deadline=None)
    @given(doc=st.one_of(docs, st.just(good)), kind=st.sampled_from(sorted(schemas.SCHEMA_FILES)))
    def agree(doc, kind):
        fast = schemas.fast_validators()[kind].is_valid(doc)
        slow = schemas.validator(kind).is_valid(doc)
        assert fast == slow, (kind, doc)

    agree()
    assert schemas.errors("event", good) == []


# --- the hot path's compiled yes/no check agrees with jsonschema ------------------------------

def _example_instances():
    """Each example message of message_examples/, placeholders filled, as every kind's schema
    would see it (most are invalid for all but one kind: both answers are compared)."""
    import re

    root = schemas.schema_dir().parent / "message_examples"
    out = []
    for path in sorted(root.rglob("*.json")):
        text = re.sub(r"\{\{[^}]*uuid\}\}", JOB, path.read_text())
        doc = json.loads(re.sub(r"\{\{[^}]*\}\}", "t" * 32, text))
        for n, step in enumerate(doc.get("steps", [])):
            if "message" not in step:
                continue
            body, params = step["message"], step.get("params", {})
            label = f"{path.parent.name}/{path.stem}#{n}"
            for kind in ("event", "delete"):
                out.append((f"{label}:{kind}", kind, body))
            out.append((f"{label}:callback", "callback", {"parameters": params, "body": body}))
            out.append((f"{label}:parameters", "parameters", params))
    return out


@pytest.mark.parametrize("label,kind,instance", _example_instances(),
                         ids=[x[0] for x in _example_instances()])
def test_fast_check_agrees_with_jsonschema_on_every_example(label, kind, instance):
    fast = schemas.fast_validators()[kind].is_valid(instance)
    slow = schemas.validators()[kind].is_valid(instance)
    assert fast == slow, f"{label}: jsonschema-rs says {fast}, jsonschema says {slow}"


@pytest.mark.parametrize("ref,problem", [("missing.json#/$defs/x", "names no local schema file"),
                                         ("definitions.json#/$defs/nothing", "points at nothing"),
                                         ("#/$defs/loop", "part of a cycle")])
def test_the_fast_path_resolves_local_references_only_and_says_what_is_wrong(ref, problem,
                                                                            no_network):
    docs = dict(schemas.load_documents())
    docs["probe.json"] = {"$id": schemas.BASE_ID + "probe.json",
                          "$defs": {"loop": {"$ref": "#/$defs/loop"}},
                          "properties": {"x": {"$ref": ref}}}
    with pytest.raises(ConfigError, match=problem):
        schemas._inline(docs["probe.json"], "probe.json", docs)
    assert no_network == []
