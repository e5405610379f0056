"""One set of consumer behaviour cases, each run on the in-memory broker and on RabbitMQ: a
``Consumer`` on a thread (in-process runner, embedded SQLite store) is fed messages, and each
case asserts what can be seen from outside (job histories in the store, messages and headers in
the queues, unacked counts, exit code). The memory broker stands in for RabbitMQ in faster
tests only because these cases hold for both. RabbitMQ's side skips without a broker, except
under CI=true."""
from __future__ import annotations

import json

import pytest

from consumer_contract_helpers import Face, held
from queue_helpers import Workload, wait_until
from reactor.contract.headers import (ATTEMPTS, DETAIL, MESSAGE_ID, OUTCOME, REASON,
                                      RETRY_REASON, ROUTING_KEY)


@pytest.fixture(params=["memory", "rabbitmq"])
def open_face(request, tmp_path):
    """Opens a ``Face`` of the broker under test (keyword arguments: settings); everything it
    opened is closed afterwards, the RabbitMQ topology deleted."""
    url = request.getfixturevalue("amqp_url") if request.param == "rabbitmq" else None
    faces: list[Face] = []

    def make(**settings) -> Face:
        workdir = tmp_path / f"face{len(faces)}"
        workdir.mkdir()
        faces.append(Face(request.param, workdir, url, **settings))
        return faces[-1]

    yield make
    for face in faces:
        face.close()


def _publish(face: Face, work: Workload) -> None:
    for message in work.messages:
        face.publish(message.body, message.routing_key, message.message_id)


def _applied(face: Face, work: Workload) -> int:
    return sum(len(face.history(uuid)) for uuid, _ in work.jobs)


# ------------------------------------------------------------------------------- the cases
def test_events_are_acked_after_their_commit(open_face):
    """Events of three jobs are applied (in the store), and afterwards nothing is left in any
    queue, nothing unacked."""
    face = open_face()
    run = face.start()
    work = Workload.build(face.jobs(3), 6)
    _publish(face, work)
    wait_until(lambda: _applied(face, work) == work.sent, 60, "every event applied")
    wait_until(face.settled_everything, 30, "the main queue empty, nothing unacked")
    work.check(face.app, str(run.consumer.counts))
    assert face.depth(face.retry_queue) == 0 and face.depth(face.dead_queue) == 0
    assert run.stop() == 0
    assert face.depth(face.main_queue) == 0  # nothing came back when the channel closed


def test_an_event_is_not_acked_while_its_commit_fails(open_face):
    """The store does not answer: the event is held unacked (not applied, not forwarded); once
    the store answers it is applied and acked."""
    face = open_face()
    run = face.start()
    [(uuid, token)] = face.jobs(1)
    face.store.down.set()
    face.send(uuid, "run", token)
    wait_until(lambda: face.store.refused > 0 and face.unacked(face.main_queue) == 1, 30,
               "the consumer to take the event and find the store down")
    held(lambda: face.unacked(face.main_queue) == 1 and face.depth(face.main_queue) == 0
         and face.depth(face.retry_queue) == 0 and face.depth(face.dead_queue) == 0, 1.5,
         "the event stays unacked with the consumer while the store is down")
    assert face.names(uuid) == []
    face.store.down.clear()
    wait_until(lambda: face.names(uuid) == ["run"], 30, "the event applied once the store is up")
    wait_until(face.settled_everything, 30, "the event acked")
    assert run.stop() == 0 and face.names(uuid) == ["run"]


def test_rejected_messages_are_dead_lettered_with_their_reason(open_face):
    """A wrong token, a schema violation and garbage: each lands in the dead-letter queue with
    reason, detail (no token in it), attempts and original routing key; the originals are
    acked."""
    face = open_face()
    run = face.start()
    (a, token_a), (b, token_b) = face.jobs(2)
    sent = {
        face.send(a, "run", token_b): ("auth_failed", a),  # another job's token
        face.publish(json.dumps({"uuid": a, "name": "run", "token": token_a,
                                 "data": "not an object"}).encode(), a): ("schema_invalid", a),
        face.publish(b"{not json at all", "garbage-key"): ("decode_error", "garbage-key"),
    }
    wait_until(lambda: face.depth(face.dead_queue) == 3, 30, "three dead letters")
    wait_until(face.settled_everything, 30, "the originals acked")
    dead = {m.properties["message_id"]: m for m in face.messages(face.dead_queue)}
    assert set(dead) == set(sent)
    for message_id, (reason, routing_key) in sent.items():
        headers = dead[message_id].headers
        assert headers[REASON] == reason, headers
        assert headers[OUTCOME] == f"rejected:{reason}"
        assert headers[ATTEMPTS] == 1 and headers[ROUTING_KEY] == routing_key
        assert headers[MESSAGE_ID] == message_id and headers[DETAIL]
        assert token_a not in json.dumps(headers, default=str)
        assert token_b not in json.dumps(headers, default=str)
    assert face.names(a) == [] and face.names(b) == []
    assert face.depth(face.retry_queue) == 0
    assert run.stop() == 0


def test_an_early_event_waits_in_the_retry_queue_and_is_applied_later(open_face):
    """``finish`` before ``run``: it goes to the delayed-retry queue with its retry reason;
    ``run`` arrives meanwhile, and once released, ``finish`` is applied after it."""
    face = open_face(transition_retries=20)  # RabbitMQ's short TTL sends it round meanwhile
    run = face.start()
    [(uuid, token)] = face.jobs(1)
    early = face.send(uuid, "finish", token)
    waiting = wait_until(lambda: face.messages(face.retry_queue), 30,
                         "the early event in the retry queue", interval_s=0.05)
    [copy] = waiting
    assert copy.properties["message_id"] == early
    assert copy.headers[RETRY_REASON] == "invalid_transition"
    assert copy.headers[ATTEMPTS] >= 1 and REASON not in copy.headers
    assert face.names(uuid) == [] and face.depth(face.dead_queue) == 0
    face.send(uuid, "run", token)
    wait_until(lambda: face.names(uuid)[:1] == ["run"], 30, "run applied")
    face.release_delayed()
    wait_until(lambda: face.names(uuid) == ["run", "finish"], 30, "finish applied after run")
    wait_until(lambda: face.settled_everything() and face.depth(face.retry_queue) == 0, 30,
               "nothing left waiting")
    assert face.depth(face.dead_queue) == 0
    assert run.stop() == 0 and face.names(uuid) == ["run", "finish"]


@pytest.mark.parametrize("failure", ["internal_error", "invalid_transition"])
def test_a_message_retried_too_often_is_dead_lettered(open_face, failure):
    """A message that fails every time (a job whose record cannot be read: a bug; or an event
    that never fits) goes round the delayed-retry queue up to the cap, then to the dead-letter
    queue (``retries_exhausted`` after ``max_attempts``; ``invalid_transition`` after
    ``transition_retries`` retries)."""
    face = open_face(max_attempts=3, transition_retries=2)
    run = face.start()
    [(uuid, token)] = face.jobs(1)
    if failure == "internal_error":
        face.store.broken.add(uuid)
        message_id, reason, attempts = face.send(uuid, "run", token), "retries_exhausted", 3
    else:
        message_id, reason, attempts = face.send(uuid, "finish", token), failure, 3

    def dead_lettered() -> bool:
        face.release_delayed()
        return face.depth(face.dead_queue) == 1
    wait_until(dead_lettered, 30, "the message dead-lettered")
    [dead] = face.messages(face.dead_queue)
    assert dead.properties["message_id"] == message_id
    assert dead.headers[REASON] == reason and dead.headers[ATTEMPTS] == attempts
    assert dead.headers[RETRY_REASON] == failure  # why its last delayed retry was made
    if failure == "internal_error":
        assert f"{attempts} attempts failed" in dead.headers[DETAIL]
    wait_until(face.settled_everything, 30, "the original acked")
    held(lambda: face.depth(face.retry_queue) == 0 and face.depth(face.dead_queue) == 1, 1.0,
         "no copy left going round")
    face.store.broken.clear()
    assert face.names(uuid) == [] and run.stop() == 0


def test_a_store_outage_pauses_consuming_and_loses_nothing(open_face):
    """While the store is down the consumer pauses: nothing is acked, retried or
    dead-lettered; once it is back, every event is applied exactly once, in order."""
    face = open_face(batch_size=5)
    run = face.start()
    work = Workload.build(face.jobs(2), 6)
    face.store.down.set()
    _publish(face, work)
    wait_until(lambda: run.status == "paused", 30, "the consumer to pause")
    held(lambda: run.status == "paused" and face.depth(face.retry_queue) == 0
         and face.depth(face.dead_queue) == 0
         and face.depth(face.main_queue) + face.unacked(face.main_queue) == work.sent, 1.5,
         "paused, every event still in the main queue or held unacked")
    assert _applied(face, work) == 0
    face.store.down.clear()
    wait_until(lambda: run.status == "consuming", 30, "the consumer to resume")
    wait_until(lambda: _applied(face, work) == work.sent, 60, "every event applied")
    wait_until(face.settled_everything, 30, "everything acked")
    work.check(face.app, str(run.consumer.counts))
    assert face.depth(face.retry_queue) == 0 and face.depth(face.dead_queue) == 0
    assert run.stop() == 0


def test_stop_drains_what_is_in_flight(open_face):
    """``request_stop`` (SIGTERM) while deliveries are in flight: ``run`` returns 0, and each
    event was either committed and acked or went back to the queue: a second consumer applies
    the rest, each event exactly once, in order."""
    face = open_face(batch_size=4, prefetch=12)
    face.store.commit_delay_s = 0.05  # so the stop meets work in flight
    run = face.start()
    work = Workload.build(face.jobs(2), 30)
    _publish(face, work)
    wait_until(lambda: _applied(face, work) >= 4, 60, "the first events applied",
               interval_s=0.01)
    assert run.stop() == 0
    applied = _applied(face, work)
    assert 0 < applied < work.sent, "the stop should have met work in flight"
    assert face.unacked(face.main_queue) == 0
    assert face.depth(face.main_queue) == work.sent - applied, \
        "every event not applied is back in the queue, every applied one acked"
    face.store.commit_delay_s = 0.0
    again = face.start()
    wait_until(lambda: _applied(face, work) == work.sent, 60, "the rest applied")
    wait_until(face.settled_everything, 30, "everything acked")
    work.check(face.app, str(again.consumer.counts))
    assert again.stop() == 0


def test_each_jobs_history_is_in_publish_order_with_group_commit(open_face):
    """Three jobs × 20 events, interleaved, committed in groups: each job's history is its
    events in publish order, each once."""
    face = open_face(batch_size=10, prefetch=30)
    run = face.start()
    work = Workload.build(face.jobs(3), 20)
    _publish(face, work)
    wait_until(lambda: _applied(face, work) == work.sent, 60, "every event applied")
    wait_until(face.settled_everything, 30, "everything acked")
    work.check(face.app, str(run.consumer.counts))
    assert run.stop() == 0
