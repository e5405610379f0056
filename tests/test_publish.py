"""``reactor publish``: input formats, message properties, publisher confirms, clear errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pika
import pika.exceptions
import pytest

from conftest import missing
from queue_helpers import QueueSetup, drain
from reactor.domain.errors import ValidationError
from reactor.domain.identifiers import typed_uuid
from reactor.broker.publisher import message_id, parse_messages, routing_key

JOB = typed_uuid("pipelinejob", "publish tests")


def _event(i: int) -> dict:
    return {"uuid": JOB, "name": "update", "token": "t" * 32, "data": {"i": i}}


# --------------------------------------------------------------------------------- formats
def test_one_object_is_sent_exactly_as_written():
    text = b'  {"uuid": "%s",  "name": "run"}\n' % JOB.encode()
    (msg,) = parse_messages("one.json", text)
    assert msg.body == text.strip() and msg.routing_key == JOB and msg.source == "one.json"
    assert msg.message_id == message_id(msg.body) == "sha256:" + __import__(
        "hashlib").sha256(msg.body).hexdigest()


def test_array_and_json_lines_give_one_message_per_object():
    arr = parse_messages("a.json", json.dumps([_event(0), _event(1), {"x": 1}]).encode())
    assert [m.source for m in arr] == ["a.json[0]", "a.json[1]", "a.json[2]"]
    assert [json.loads(m.body) for m in arr] == [_event(0), _event(1), {"x": 1}]
    assert [m.routing_key for m in arr] == [JOB, JOB, ""]
    lines = parse_messages("l.jsonl", (json.dumps(_event(0)) + "\n\n" +
                                       json.dumps(_event(1)) + "\n").encode())
    assert [m.source for m in lines] == ["l.jsonl:1", "l.jsonl:3"]
    assert len({m.message_id for m in arr + lines}) == 3  # same body, same id


@pytest.mark.parametrize("data, where", [
    (b'{"a": 1}\n{"b": \n', "f:2"),
    (b'[{"a": 1}, 7]', "f[1]"),
    (b'"just a string"', "f: expected a JSON object"),
    (b"  \n", "f: empty input"),
    (b"[]", "f: the JSON array is empty"),
    (b'{"a": "\xff"}', "f: not UTF-8"),
    (b'{"a": 1}\n[1, 2]\n', "f:2: expected a JSON object"),
])
def test_bad_input_names_the_file_and_the_place(data, where):
    with pytest.raises(ValidationError, match=__import__("re").escape(where)):
        parse_messages("f", data)


def test_the_routing_key_is_the_job_uuid_or_nothing():
    assert routing_key({"uuid": JOB}) == JOB
    # Anything else routes by "": another kind of uuid, upper case, not text, no object.
    pipeline = typed_uuid("pipeline", "publish tests")
    for doc in ({"uuid": pipeline}, {"uuid": JOB.upper()}, {"uuid": 7}, {}, [JOB], JOB):
        assert routing_key(doc) == "", doc


def test_raw_sends_the_bytes_unchanged_and_unique_ids_differ():
    (msg,) = parse_messages("bad.bin", b"\xff{not json", raw=True)
    assert msg.body == b"\xff{not json" and msg.routing_key == ""
    a = parse_messages("x", b'{"a": 1}', unique_ids=True)[0].message_id
    b = parse_messages("x", b'{"a": 1}', unique_ids=True)[0].message_id
    assert a != b


# --------------------------------------------------------------------------------- the command
@pytest.fixture
def setup(amqp_url, sqlite_uri, tmp_path):
    s = QueueSetup(amqp_url, sqlite_uri, tmp_path)
    yield s
    s.close()


def _publish(setup: QueueSetup, *args: str, stdin: bytes = b"", env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "reactor.cli.main", "publish", *args],
                          input=stdin, env=env or setup.env(), cwd=setup.workdir,
                          capture_output=True, timeout=120)


def _depth_or_absent(url: str, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return 0
    finally:
        if conn.is_open:
            conn.close()


@pytest.mark.rabbitmq
def test_files_and_stdin_are_published_persistent_with_ids_and_confirmed(setup, tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps(_event(0)))
    lines = tmp_path / "more.jsonl"
    lines.write_text("\n".join(json.dumps(_event(i)) for i in (1, 2)) + "\n")
    stdin = json.dumps([_event(3), _event(4)]).encode()
    out = _publish(setup, str(one), str(lines), "-", stdin=stdin)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == \
        f"confirmed 5 of 5 message(s) to exchange {setup.names['exchange']!r}"
    got = drain(setup.amqp_url, setup.names["queue"])
    assert sorted(json.loads(g.body)["data"]["i"] for g in got) == [0, 1, 2, 3, 4]
    for g in got:
        assert g.properties.delivery_mode == 2
        assert g.properties.message_id == message_id(g.body)
        assert g.properties.content_type == "application/json"
        assert g.routing_key == JOB


@pytest.mark.rabbitmq
def test_a_bad_file_publishes_nothing(setup, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_event(0)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_event(1)) + "\n{oops\n")
    out = _publish(setup, str(good), str(bad))
    assert out.returncode == 2
    assert f"{bad}:2: not valid JSON" in out.stderr.decode()
    assert _depth_or_absent(setup.amqp_url, setup.names["queue"]) == 0
    missing_file = _publish(setup, str(tmp_path / "nope.json"))
    assert missing_file.returncode == 2 and "nope.json" in missing_file.stderr.decode()


@pytest.mark.rabbitmq
def test_unconfirmed_messages_are_reported_and_exit_1(setup, tmp_path):
    if shutil.which("rabbitmqctl") is None:
        missing("rabbitmqctl", "it is needed to set a queue policy")
    queue = setup.names["queue"]
    # A policy (not queue arguments, which the publisher declares) caps the queue at two
    # messages and makes the broker refuse (nack) the third.
    policy = ["rabbitmqctl", "-q", "set_policy", f"cap-{setup.tag}", f"^{queue}$",
              '{"max-length": 2, "overflow": "reject-publish"}', "--apply-to", "queues"]
    if subprocess.run(policy, capture_output=True, timeout=60).returncode != 0:
        missing("rabbitmqctl", "it cannot reach the broker to set a policy")
    try:
        events = tmp_path / "three.json"
        events.write_text(json.dumps([_event(0), _event(1), _event(2)]))
        out = _publish(setup, str(events))
    finally:
        subprocess.run(["rabbitmqctl", "-q", "clear_policy", f"cap-{setup.tag}"],
                       capture_output=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "confirmed 2 of 3" in out.stdout.decode()
    assert f"not confirmed: {events}[2]: the broker refused" in out.stderr.decode()


@pytest.mark.rabbitmq
def test_broker_errors_are_clear_and_hide_the_password(setup, tmp_path):
    msg = tmp_path / "m.json"
    msg.write_text(json.dumps(_event(0)))
    env = setup.env(broker_url="")
    out = _publish(setup, str(msg), env=env)
    assert out.returncode == 2 and "no broker configured" in out.stderr.decode()
    wrong = setup.amqp_url.replace("guest:guest@", "guest:s3cr3tpw@")
    assert wrong != setup.amqp_url, "the test broker URL is expected to use guest:guest"
    out = _publish(setup, str(msg), env=setup.env(broker_url=wrong))
    err = out.stderr.decode()
    assert out.returncode == 2 and "cannot connect" in err and "***" in err, err
    assert "s3cr3tpw" not in err
