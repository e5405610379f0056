"""The RabbitMQ consumer end to end (real RabbitMQ, real MongoDB-wire server): outcomes, dead
letters and their headers, delayed retries, poison messages, topology, health file."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pytest

from queue_helpers import (QueueSetup, Workload, connection_factory, count_lines, drain, event,
                           make_jobs, queue_depth, stop, total_depth, wait_until)
from reactor.consume.consumer import Consumer
from reactor.consume.settle import ACK_HOLD_S, Limits
from reactor.contract.headers import (ATTEMPTS, DETAIL, EXCHANGE, FIRST_SEEN, MESSAGE_ID, OUTCOME,
                                      REASON, ROUTING_KEY)
from reactor.domain.errors import ConfigError
from reactor.domain.identifiers import typed_uuid
from reactor.engine.jobs import Jobs
from reactor.engine.pipeline import Pipeline
from reactor.engine.runner import InProcessRunner
from reactor.broker.publisher import OutgoingMessage, message_id, publish
from reactor.broker.topology import Topology

pytestmark = [pytest.mark.rabbitmq, pytest.mark.mongo]


@pytest.fixture
def setup(amqp_url, mongo_store_uri, tmp_path):
    s = QueueSetup(amqp_url, mongo_store_uri, tmp_path)
    yield s
    s.close()


def _publish_bodies(setup: QueueSetup, bodies: dict[str, bytes]) -> dict[str, str]:
    """Publish raw bodies (label → body); return label → message id."""
    msgs = []
    for label, body in bodies.items():
        try:
            key = json.loads(body).get("uuid", "")
        except ValueError:
            key = ""
        msgs.append(OutgoingMessage(label, body, key if isinstance(key, str) else "",
                                    message_id(body)))
    report = publish(setup.amqp_url, setup.topology, msgs)
    assert report.ok, report.failed
    return {m.source: m.message_id for m in msgs}


# --------------------------------------------------------------------------------- end to end
def test_end_to_end_many_jobs_all_applied_nothing_left_unacked(setup, tmp_path):
    jobs = make_jobs(setup.app, 30, "e2e")
    work = Workload.build(jobs, 10)
    lines = tmp_path / "events.jsonl"
    lines.write_bytes(b"\n".join(m.body for m in work.messages) + b"\n")
    out = subprocess.run([sys.executable, "-m", "reactor.cli.main", "publish", str(lines)],
                         env=setup.env(), cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"confirmed {work.sent} of {work.sent}" in out.stdout

    health = tmp_path / "health.json"
    proc = setup.start_consumer("--health-file", str(health), "--health-interval", "0.2")
    wait_until(lambda: work.applied(setup.app) == work.sent, 120, "every event applied")
    status = wait_until(lambda: health.exists() and json.loads(health.read_text()), 30,
                        "the health file")
    assert status["status"] == "consuming" and status["pid"] == proc.pid
    assert stop(proc) == 0, setup.logs()
    assert not health.exists(), "the health file must be removed on a clean exit"

    logs = setup.logs()
    counts = (f"sent={work.sent} applied={count_lines(logs, 'applied:')} "
              f"duplicates={count_lines(logs, 'duplicate:')}")
    work.check(setup.app, counts)
    assert count_lines(logs, "applied:") == work.sent, counts
    # The consumer is gone: anything it had not acked would be back in a queue now.
    assert total_depth(setup.amqp_url, setup.queue_names()) == 0, counts


def test_every_rejection_reason_is_dead_lettered_with_headers(setup):
    setup.overrides.update(max_message_bytes=2048, transition_retries=1)
    (uuid, token), = make_jobs(setup.app, 1, "dlq")
    stranger = typed_uuid("pipelinejob", "no such job")
    bodies = {
        "applied": event(uuid, "run", token),
        "too_large": event(uuid, "update", token, {"pad": "x" * 3000}),
        "decode_error": b'{"uuid": "' + uuid.encode() + b'", "name": ',
        "schema_invalid": json.dumps({"uuid": uuid, "name": "run", "token": token,
                                      "extra": 1}).encode(),
        "unknown_event": event(uuid, "explode", token),
        "unknown_job": event(stranger, "run", token),
        "auth_failed": event(uuid, "update", "0" * 32),
        "invalid_transition": event(uuid, "finalize", token),
    }
    ids = _publish_bodies(setup, bodies)
    proc = setup.start_consumer()
    dlq = setup.names["dead_letter_queue"]
    wait_until(lambda: queue_depth(setup.amqp_url, dlq) == 7, 60, "7 dead letters")
    assert stop(proc) == 0, setup.logs()

    dead = {g.headers[REASON]: g for g in drain(setup.amqp_url, dlq)}
    expected = sorted(set(bodies) - {"applied"})
    assert sorted(dead) == expected, f"sent={len(bodies)} dead-lettered={sorted(dead)}"
    for reason, got in dead.items():
        h = got.headers
        assert got.body == bodies[reason], f"{reason}: the body must be kept intact"
        assert h[OUTCOME] == f"rejected:{reason}"
        assert h[DETAIL], f"{reason}: empty detail"
        assert h[ATTEMPTS] == (2 if reason == "invalid_transition" else 1), (reason, h)
        assert h[FIRST_SEEN].endswith("Z") and h[EXCHANGE] == setup.names["exchange"]
        assert h[MESSAGE_ID] == ids[reason] == got.properties.message_id
        assert h[ROUTING_KEY] == (stranger if reason == "unknown_job" else
                                  "" if reason == "decode_error" else uuid), (reason, h)
        assert got.properties.delivery_mode == 2
        assert token not in json.dumps(h, default=str), f"{reason}: token leaked into headers"
    assert "2048" in dead["too_large"].headers[DETAIL]
    assert "finalize" in dead["invalid_transition"].headers[DETAIL]
    assert token not in setup.logs(), "a token appeared in the consumer log"

    record = setup.app.store.get_job(uuid)
    assert [h["name"] for h in record["history"]] == ["create", "run"], "rejections changed it"
    assert total_depth(setup.amqp_url, setup.queue_names()) == 0


def test_out_of_order_arrival_applied_after_delayed_retry(setup):
    setup.overrides.update(transition_retries=2)
    (a, ta), (b, tb) = make_jobs(setup.app, 2, "ooo")
    # finish before run: invalid from CREATED now, valid once run has been applied.
    _publish_bodies(setup, {"finish": event(a, "finish", ta), "run": event(a, "run", ta),
                            "finalize": event(b, "finalize", tb)})
    proc = setup.start_consumer()
    dlq = setup.names["dead_letter_queue"]
    wait_until(lambda: setup.app.store.get_job(a)["state"] == "FINISHED", 60,
               "job A to reach FINISHED")
    wait_until(lambda: queue_depth(setup.amqp_url, dlq) == 1, 60, "the truly invalid event "
               "dead-lettered")
    assert stop(proc) == 0
    logs = setup.logs()
    assert [h["name"] for h in setup.app.store.get_job(a)["history"]] == \
        ["create", "run", "finish"]
    assert count_lines(logs, "rejected:invalid_transition on attempt 1") >= 2, logs
    (dead,) = drain(setup.amqp_url, dlq)
    assert dead.headers[REASON] == "invalid_transition"
    assert dead.headers[ATTEMPTS] == 3, "transition_retries=2: two delayed retries, then dead"
    assert setup.app.store.get_job(b)["revision"] == 1
    assert total_depth(setup.amqp_url, setup.queue_names()) == 0


class PoisonJobs:
    """The real job operations, except that event data containing "poison" makes applying or
    planning it raise (a bug, on a message's own and in a group commit alike)."""

    def __init__(self, jobs: Jobs):
        self.jobs = jobs

    def __getattr__(self, name):
        return getattr(self.jobs, name)

    def apply(self, uuid, event, data=None, *args, **kwargs):
        self._check(data)
        return self.jobs.apply(uuid, event, data, *args, **kwargs)

    def plan(self, uuid, event, data, *args, **kwargs):
        self._check(data)
        return self.jobs.plan(uuid, event, data, *args, **kwargs)

    @staticmethod
    def _check(data) -> None:
        if "poison" in json.dumps(data):
            raise RuntimeError("simulated bug while processing")


@pytest.mark.parametrize("batch_size", [1, 50], ids=["one-by-one", "group-commit"])
def test_poison_message_is_dead_lettered_after_attempt_cap_and_consumer_keeps_running(
        setup, batch_size):
    (uuid, token), = make_jobs(setup.app, 1, "poison")
    app = setup.app
    pipeline = Pipeline(PoisonJobs(app.jobs), app.settings.max_message_bytes)
    consumer = Consumer(InProcessRunner(pipeline), app.store.ping,
                        connection_factory(setup.amqp_url, setup.topology), setup.topology, 10,
                        Limits(max_attempts=3, transition_retries=0), batch_size=batch_size)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", consumer.run(False)))
    thread.start()
    try:
        _publish_bodies(setup, {"poison": event(uuid, "update", token, {"x": "poison"})})
        dlq = setup.names["dead_letter_queue"]
        wait_until(lambda: queue_depth(setup.amqp_url, dlq) == 1, 60, "the poison message "
                   "dead-lettered")
        _publish_bodies(setup, {"good": event(uuid, "run", token)})
        wait_until(lambda: app.store.get_job(uuid)["state"] == "RUNNING", 60,
                   "a good message after the poison one applied")
    finally:
        consumer.request_stop()
        thread.join(60)
    assert result.get("code") == 0
    (dead,) = drain(setup.amqp_url, setup.names["dead_letter_queue"])
    h = dead.headers
    counts = f"sent=2 applied=1 dead-lettered=1 attempts={h.get(ATTEMPTS)}"
    assert h[REASON] == "retries_exhausted" and h[ATTEMPTS] == 3, counts
    assert h[OUTCOME] == "retry:internal_error" and "RuntimeError" in h[DETAIL], h
    assert consumer.counts["retry_later:internal_error"] == 2, consumer.counts
    assert [e["name"] for e in app.store.get_job(uuid)["history"]] == ["create", "run"]
    assert total_depth(setup.amqp_url, setup.queue_names()) == 0


class SlowPipeline:
    """The real pipeline, taking ``seconds`` longer per message."""

    def __init__(self, pipeline: Pipeline, seconds: float):
        self.pipeline = pipeline
        self.seconds = seconds

    def process(self, items, hold=None):
        time.sleep(self.seconds * len(items))
        return self.pipeline.process(items, hold)


def test_slow_processing_does_not_starve_heartbeats(setup):
    (uuid, token), = make_jobs(setup.app, 1, "slow")
    url = setup.amqp_url + ("&" if "?" in setup.amqp_url else "?") + "heartbeat=1"
    app = setup.app
    consumer = Consumer(InProcessRunner(SlowPipeline(app.pipeline(), 4.0)), app.store.ping,
                        connection_factory(url, setup.topology), setup.topology, 10, Limits())
    thread = threading.Thread(target=consumer.run, args=(False,))
    thread.start()
    try:
        _publish_bodies(setup, {"run": event(uuid, "run", token),
                                "update": event(uuid, "update", token, {"n": 1})})
        wait_until(lambda: app.store.get_job(uuid)["revision"] == 3, 60, "both applied")
        wait_until(lambda: consumer.counts["applied"] == 2, 30, "both acked")
    finally:
        consumer.request_stop()
        thread.join(60)
    # 8 s of processing with a 1 s heartbeat: the broker would have dropped a connection whose
    # heartbeats stalled; one channel for the whole run means it never did.
    assert consumer.connection.generation == 1
    assert total_depth(setup.amqp_url, setup.queue_names()) == 0


def test_acks_are_not_held_behind_slow_commits(setup):
    """Acks are held to go out together only while that keeps each within ACK_HOLD_S: with a
    turn far longer than that, each delivery is acked (and counted, and logged) as soon as it
    is committed, not when the backlog is done."""
    (uuid, token), = make_jobs(setup.app, 1, "held")
    app = setup.app
    _publish_bodies(setup, {"run": event(uuid, "run", token),
                            **{f"u{n}": event(uuid, "update", token, {"n": n})
                               for n in range(5)}})
    consumer = Consumer(InProcessRunner(SlowPipeline(app.pipeline(), 0.3)), app.store.ping,
                        connection_factory(setup.amqp_url, setup.topology), setup.topology, 40,
                        Limits())
    assert consumer.pace.ack_every == 10 and 0.3 > ACK_HOLD_S
    thread = threading.Thread(target=consumer.run, args=(False,))
    thread.start()
    try:
        wait_until(lambda: consumer.counts["applied"] >= 1, 60, "the first delivery acked",
                   interval_s=0.02)
        applied_then = app.store.get_job(uuid)["revision"] - 1
        wait_until(lambda: consumer.counts["applied"] == 6, 60, "all six acked")
    finally:
        consumer.request_stop()
        thread.join(60)
    assert applied_then < 6  # acked while the backlog was still being worked through
    assert total_depth(setup.amqp_url, setup.queue_names()) == 0


def test_quorum_queues_consume_and_retry(setup):
    # Five delayed retries, not two: on a loaded machine the overtaken "run" can take longer
    # than two short retry delays to commit, and "finish" would then be dead-lettered.
    setup.overrides.update(queue_type="quorum", transition_retries=5)
    jobs = make_jobs(setup.app, 3, "quorum")
    work = Workload.build(jobs, 6)
    work.publish(setup)
    (x, tx), = make_jobs(setup.app, 1, "quorum-ooo")
    _publish_bodies(setup, {"finish": event(x, "finish", tx), "run": event(x, "run", tx)})
    proc = setup.start_consumer()
    wait_until(lambda: work.applied(setup.app) == work.sent
               and setup.app.store.get_job(x)["state"] == "FINISHED", 60, "all applied")
    assert stop(proc) == 0
    work.check(setup.app, f"sent={work.sent + 2}")
    assert total_depth(setup.amqp_url, setup.queue_names()) == 0


@pytest.mark.parametrize("pipeline_process", [True, False], ids=["child", "in-process"])
def test_consume_with_the_embedded_sqlite_store(amqp_url, sqlite_uri, tmp_path,
                                                pipeline_process):
    setup = QueueSetup(amqp_url, sqlite_uri, tmp_path,
                       overrides={"pipeline_process": pipeline_process, "batch_size": 1})
    try:
        work = Workload.build(make_jobs(setup.app, 3, "sqlite"), 6)
        work.publish(setup)
        proc = setup.start_consumer()
        wait_until(lambda: work.applied(setup.app) == work.sent, 60, "all applied")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == (1 if pipeline_process else 0), children
        assert stop(proc) == 0
        work.check(setup.app, f"sent={work.sent}")
        assert total_depth(setup.amqp_url, setup.queue_names()) == 0
    finally:
        setup.close()


def test_topology_conflict_is_a_clear_start_up_error(setup):
    conn = pika.BlockingConnection(pika.URLParameters(setup.amqp_url))
    conn.channel().queue_declare(setup.names["queue"], durable=True,
                                 arguments={"x-queue-type": "quorum"})
    conn.close()
    proc = setup.start_consumer()
    assert proc.wait(timeout=60) == 2
    log = setup.logs()
    assert "refused the topology" in log and "PRECONDITION_FAILED" in log, log


def test_consume_without_broker_url_is_an_error(setup):
    env = setup.env()
    env["REACTOR_BROKER_URL"] = ""
    out = subprocess.run([sys.executable, "-m", "reactor.cli.main", "consume"], env=env,
                         cwd=setup.workdir, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "REACTOR_BROKER_URL" in out.stderr, out.stderr


def test_topology_layouts_and_validation():
    plain = Topology("ex", "q", "dead", "retry")
    assert plain.main_queues == ["q"] and plain.retry_queue_for("q") == "retry"
    retry = [kw for m, kw in plain.declarations() if m == "queue_declare" and kw["queue"] ==
             "retry"][0]
    assert retry["arguments"]["x-dead-letter-routing-key"] == "q"
    parts = Topology("ex", "q", "dead", "retry", partitions=4)
    assert parts.main_queues == ["q.p0", "q.p1", "q.p2", "q.p3"]
    assert parts.retry_queue_for("q.p2") == "retry.p2"
    assert parts.member_queues(1, 2) == ["q.p1", "q.p3"]
    declared = {kw.get("queue"): kw for m, kw in parts.declarations() if m == "queue_declare"}
    assert declared["q.p1"]["arguments"]["x-single-active-consumer"] is True
    assert ("exchange_declare", {"exchange": "ex.hash", "exchange_type": "x-consistent-hash",
                                 "durable": True}) in parts.declarations()
    with pytest.raises(ConfigError, match="different names"):
        Topology("ex", "q", "q", "retry")
    with pytest.raises(ConfigError, match="exchange"):
        Topology("amq.topic", "q", "dead", "retry")
    with pytest.raises(ConfigError, match="partition"):
        parts.member_queues(0, 5)

