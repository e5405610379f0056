"""``reactor deadletters list|show|requeue`` against dead letters a real consumer wrote: listing
changes nothing, showing masks tokens, requeueing re-drives exactly the chosen messages (with a
fresh attempt count) and leaves everything else untouched, and a bad choice changes nothing."""
from __future__ import annotations

import json
import subprocess
import sys

import pika
import pytest

from queue_helpers import QueueSetup, make_jobs, queue_depth, stop, wait_until
from reactor.contract.headers import ATTEMPTS, REASON
from reactor.ops.deadletters import REDRIVEN
from reactor.domain.identifiers import job_uuid, pipeline_uuid
from reactor.broker.publisher import OutgoingMessage, publish

pytestmark = [pytest.mark.rabbitmq]


@pytest.fixture
def setup(amqp_url, sqlite_uri, tmp_path):
    s = QueueSetup(amqp_url, sqlite_uri, tmp_path)
    yield s
    s.close()


def reactor(setup: QueueSetup, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reactor.cli.main", *args], cwd=setup.workdir,
                          env=setup.env(), capture_output=True, text=True, timeout=120)


def listed(setup: QueueSetup) -> list[dict]:
    out = reactor(setup, "deadletters", "list", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def settle(setup: QueueSetup, expected: int, dead: int) -> None:
    """Run a consumer until it settled ``expected`` messages and the dead-letter queue holds
    ``dead``; stop it cleanly."""
    health = setup.workdir / "health.json"
    proc = setup.start_consumer("--health-file", str(health), "--health-interval", "0.2")
    wait_until(lambda: health.exists()
               and sum(json.loads(health.read_text())["counts"].values()) == expected
               and queue_depth(setup.amqp_url, setup.names["dead_letter_queue"]) == dead,
               120, f"{expected} message(s) settled, {dead} dead letter(s)")
    assert stop(proc) == 0, setup.logs()


def main_queue_headers(setup: QueueSetup) -> list[tuple[dict, str]]:
    """Headers and message id of each message in the main queue, left in place."""
    conn = pika.BlockingConnection(pika.URLParameters(setup.amqp_url))
    try:
        ch = conn.channel()
        out = []
        while True:
            method, props, _body = ch.basic_get(setup.names["queue"])
            if method is None:
                return out
            out.append((dict(props.headers or {}), props.message_id))
    finally:
        conn.close()


def test_list_show_and_requeue_dead_letters_written_by_the_consumer(setup):
    ((job, token),) = make_jobs(setup.app, 1, "dead")
    pipeline = pipeline_uuid("queue-tests-dead")
    later = job_uuid(pipeline, [], {"created": "later"})      # created after the fact
    never = job_uuid(pipeline, [], {"created": "never"})      # never created
    later_token = setup.app.authority.job_token(later)
    never_token = setup.app.authority.job_token(never)
    bodies = [
        ("m-later", {"uuid": later, "name": "run", "token": later_token}),
        ("m-auth", {"uuid": job, "name": "run", "token": "not-the-right-token"}),
        ("m-schema", {"uuid": job, "name": "run", "token": token, "colour": "red"}),
        ("m-never", {"uuid": never, "name": "run", "token": never_token}),
    ]
    msgs = [OutgoingMessage(mid, json.dumps(doc).encode(), doc["uuid"], mid)
            for mid, doc in bodies]
    assert publish(setup.amqp_url, setup.topology, msgs).ok
    settle(setup, expected=4, dead=4)

    # --- list: every dead letter, in order, with its reason; nothing moves --------------------
    first = listed(setup)
    assert [(d["message_id"], d["reason"], d["attempts"]) for d in first] == [
        ("m-later", "unknown_job", 1), ("m-auth", "auth_failed", 1),
        ("m-schema", "schema_invalid", 1), ("m-never", "unknown_job", 1)]
    for d in first:
        assert d["first_seen"].endswith("Z") and d["dead_lettered_at"].endswith("Z")
        assert d["detail"] and d["routing_key"] in (job, later, never)
    assert "colour" in first[2]["detail"]
    assert listed(setup) == first
    assert queue_depth(setup.amqp_url, setup.names["dead_letter_queue"]) == 4
    out = reactor(setup, "deadletters", "list", "--reason", "unknown_job")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == ["MESSAGE", "ID", "REASON", "ATTEMPTS", "FIRST",
                                                  "SEEN", "DETAIL"]
    assert [line.split()[0] for line in out.stdout.splitlines()[1:]] == ["m-later", "m-never"]
    assert "4 message(s)" in out.stderr and "2 shown" in out.stderr

    # --- show: headers and body, token masked -----------------------------------------------
    out = reactor(setup, "deadletters", "show", "m-later", "--json")
    assert out.returncode == 0, out.stderr
    (shown,) = json.loads(out.stdout)
    assert json.loads(shown["body"])["uuid"] == later
    assert json.loads(shown["body"])["token"] == later_token[:4] + "…"
    assert shown["headers"][REASON] == "unknown_job"
    out = reactor(setup, "deadletters", "show", "m-later")
    assert out.returncode == 0 and "reason" in out.stdout and "body:" in out.stdout
    every_output = json.dumps(first) + out.stdout
    for secret in (token, later_token, never_token):
        assert secret not in every_output
    out = reactor(setup, "deadletters", "show", "m-nope")
    assert out.returncode == 2 and "m-nope" in out.stderr

    # --- a bad choice changes nothing ---------------------------------------------------------
    out = reactor(setup, "deadletters", "requeue", "m-later", "m-nope")
    assert out.returncode == 2 and "'m-nope'" in out.stderr and "nothing was requeued" in \
        out.stderr
    out = reactor(setup, "deadletters", "requeue")
    assert out.returncode == 2 and "choose what to requeue" in out.stderr
    out = reactor(setup, "deadletters", "requeue", "--reason", "bogus")
    assert out.returncode == 2 and "bogus" in out.stderr
    assert listed(setup) == first
    assert queue_depth(setup.amqp_url, setup.names["queue"]) == 0

    # --- the fix (the job now exists), then re-drive that one message -------------------------
    record, created = setup.app.jobs.create(pipeline, data={"created": "later"})
    assert created and record["uuid"] == later
    out = reactor(setup, "deadletters", "requeue", "m-later")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "requeued m-later (unknown_job)"
    # Everything else is still there, in order, unchanged.
    assert listed(setup) == [{**d, "position": n} for n, d in enumerate(first[1:])]
    ((headers, mid),) = main_queue_headers(setup)
    assert mid == "m-later" and headers[REDRIVEN] == 1
    assert ATTEMPTS not in headers and REASON not in headers  # a fresh start
    settle(setup, expected=1, dead=3)
    assert [h["name"] for h in setup.app.store.get_job(later)["history"]] == ["create", "run"]

    # --- by reason: the remaining unknown_job goes round again and comes back ----------------
    out = reactor(setup, "deadletters", "requeue", "--reason", "unknown_job")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "requeued m-never (unknown_job)"
    assert [d["message_id"] for d in listed(setup)] == ["m-auth", "m-schema"]
    settle(setup, expected=1, dead=3)
    again = listed(setup)
    assert [(d["message_id"], d["reason"], d["attempts"]) for d in again] == [
        ("m-auth", "auth_failed", 1), ("m-schema", "schema_invalid", 1),
        ("m-never", "unknown_job", 1)]
    out = reactor(setup, "deadletters", "show", "m-never", "--json")
    assert json.loads(out.stdout)[0]["headers"][REDRIVEN] == 1


def test_a_token_sent_in_the_wrong_field_is_in_no_header_log_or_listing(setup):
    """Swapped uuid and token on the queue: the dead letter's detail header, the consumer's
    log and ``deadletters list/show`` never hold the token (it is in no token field, so only
    the rule that masks anything token-shaped, and errors that never echo it, keep it out)."""
    ((job, token),) = make_jobs(setup.app, 1, "swapped")
    docs = [("m-swap", {"uuid": token, "name": "update", "token": job}),
            ("m-name", {"uuid": job, "name": token, "token": token})]
    msgs = [OutgoingMessage(mid, json.dumps(doc).encode(), job, mid) for mid, doc in docs]
    assert publish(setup.amqp_url, setup.topology, msgs).ok
    settle(setup, expected=2, dead=2)
    conn = pika.BlockingConnection(pika.URLParameters(setup.amqp_url))
    try:
        ch = conn.channel()
        headers = []
        # Held unacknowledged (not requeued one by one, which would hand the same message
        # back): closing the connection returns them all.
        while (got := ch.basic_get(setup.names["dead_letter_queue"]))[0] is not None:
            headers.append(dict(got[1].headers))
    finally:
        conn.close()
    assert [h[REASON] for h in headers] == ["schema_invalid", "unknown_event"]
    listing = reactor(setup, "deadletters", "list", "--json")
    shown = [reactor(setup, "deadletters", "show", mid) for mid, _ in docs]
    assert listing.returncode == 0 and [s.returncode for s in shown] == [0, 0]
    everything = json.dumps(headers, default=str) + listing.stdout + listing.stderr + \
        "".join(s.stdout + s.stderr for s in shown) + setup.logs()
    assert token not in everything
    assert job in everything  # what is harmless is still shown


def test_deadletters_need_a_broker(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("REACTOR_")}
    env["REACTOR_STATE_DIR"] = str(tmp_path / ".reactor")
    out = subprocess.run([sys.executable, "-m", "reactor.cli.main", "deadletters", "list"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "REACTOR_BROKER_URL" in out.stderr
