"""One set of behaviour cases, run against the in-memory broker and against RabbitMQ through
``ConsumerTransport``: what the consumer relies on of a consuming connection holds for both, so
tests may use ``reactor.broker.memory`` in place of a broker (RabbitMQ's side skips without a
broker, except under CI=true). The cases: deliveries, the prefetch window, held and partial
acks, forwarded copies (retry and back after the TTL, dead letters, one no queue takes),
redelivery on close and on a lost connection, pause, stop with grace, periodic tasks,
partitions (one key, one queue; one active consumer), quorum queues' delivery limit.
"""
from __future__ import annotations

import threading
import time
import uuid as _uuid

import pytest

from broker_helpers import QUIET_S, MemorySide, RabbitSide, Side
from queue_helpers import wait_until
from reactor.broker.topology import Topology


@pytest.fixture(params=["memory", "rabbitmq"])
def open_broker(request):
    """Opens a broker of the kind under test on a fresh topology (keyword arguments of
    ``Topology``); everything opened is closed afterwards."""
    url = request.getfixturevalue("amqp_url") if request.param == "rabbitmq" else None
    sides: list[Side] = []

    def make(**kwargs) -> Side:
        tag = "t" + _uuid.uuid4().hex[:10]
        kwargs.setdefault("retry_delay_ms", 200)
        topology = Topology(f"{tag}.x", f"{tag}.q", f"{tag}.dead", f"{tag}.retry", **kwargs)
        sides.append(MemorySide(topology) if url is None else RabbitSide(url, topology))
        return sides[-1]

    yield make
    for side in sides:
        side.close()


def _publish(side, count: int, routing_key: str = "job", prefix: str = "m") -> None:
    for n in range(count):
        side.publish(side.topology.exchange, routing_key, f"{prefix}{n}".encode(),
                     {"message_id": f"{prefix}{n}", "headers": {"n": n}})


# ------------------------------------------------------------------------------- the cases
def test_deliveries_arrive_in_order_on_the_connections_thread(open_broker):
    side = open_broker()
    _publish(side, 3, routing_key="job-1")
    consuming = side.consume()
    got = consuming.wait(3)
    assert [d.body for d in got] == [b"m0", b"m1", b"m2"]
    first = got[0]
    assert (first.queue, first.exchange, first.routing_key) == (side.topology.queue,
                                                                side.topology.exchange, "job-1")
    assert first.message_id == "m0" and first.headers == {"n": 0}
    assert first.properties["delivery_mode"] == 2 and not first.redelivered
    assert {d.generation for d in got} == {1} and consuming.connection.is_current(first)
    assert consuming.threads == {consuming.runner}


def test_the_prefetch_window_bounds_what_is_delivered(open_broker):
    side = open_broker()
    _publish(side, 8)
    consuming = side.consume(prefetch=3)
    got = consuming.wait(3)
    consuming.connection.ack_many(got[:2])
    assert [d.body for d in consuming.wait(5)] == [f"m{n}".encode() for n in range(5)]


def test_held_acks_free_no_slot_until_sent(open_broker):
    side = open_broker()
    _publish(side, 6)
    consuming = side.consume(prefetch=3)
    got = consuming.wait(3)
    consuming.connection.ack_many(got, now=False)
    consuming.wait(3)
    ran_on: list = []
    consuming.connection.send_acks(after=lambda: ran_on.append(threading.current_thread()))
    consuming.wait(6)
    assert ran_on == [consuming.runner]


def test_acking_later_deliveries_leaves_earlier_ones_unsettled(open_broker):
    side = open_broker()
    _publish(side, 5)
    consuming = side.consume(prefetch=5)
    got = consuming.wait(5)
    consuming.connection.ack_many([got[3], got[4]])
    time.sleep(QUIET_S)
    consuming.stop()
    wait_until(lambda: side.depth(side.topology.queue) == 3, 30, "three messages back")
    back = side.messages(side.topology.queue)
    assert [m.body for m in back] == [b"m0", b"m1", b"m2"] and all(m.redelivered for m in back)


def test_a_forwarded_copy_waits_in_the_retry_queue_then_comes_back(open_broker):
    side = open_broker()
    topology = side.topology
    _publish(side, 1)
    consuming = side.consume()
    (first,) = consuming.wait(1)
    headers = {**first.headers, "x-reactor-attempts": 1}
    consuming.connection.forward(first, topology.retry_queue_for(first.queue), first.body,
                                 {**first.properties, "headers": headers})
    again = consuming.wait(2)[1]
    assert again.body == b"m0" and again.message_id == "m0" and not again.redelivered
    assert (again.queue, again.exchange, again.routing_key) == (topology.queue, "",
                                                                topology.queue)
    assert again.headers["x-reactor-attempts"] == 1 and again.headers["n"] == 0
    (death,) = again.headers["x-death"]
    assert (death["reason"], death["queue"], death["count"]) == (
        "expired", topology.retry_queue, 1)
    assert again.headers["x-first-death-reason"] == "expired"
    consuming.connection.ack_many([again])
    time.sleep(QUIET_S)
    consuming.stop()
    assert side.depth(topology.queue) == 0 and side.depth(topology.retry_queue) == 0


def test_a_dead_letter_waits_in_the_dead_letter_queue(open_broker):
    side = open_broker()
    topology = side.topology
    _publish(side, 1)
    consuming = side.consume()
    (first,) = consuming.wait(1)
    consuming.connection.forward(first, topology.dead_letter_queue, first.body,
                                 {**first.properties, "headers": {"x-reactor-reason": "bad"}})
    wait_until(lambda: side.depth(topology.dead_letter_queue) == 1, 30, "the dead letter")
    (dead,) = side.messages(topology.dead_letter_queue)
    assert dead.body == b"m0" and dead.headers == {"x-reactor-reason": "bad"}
    assert dead.properties["message_id"] == "m0"
    consuming.stop()
    assert side.depth(topology.queue) == 0


def test_closing_returns_unsettled_deliveries_redelivered(open_broker):
    side = open_broker()
    _publish(side, 3)
    consuming = side.consume()
    got = consuming.wait(3)
    consuming.connection.ack_many(got[:1])
    time.sleep(QUIET_S)
    consuming.stop()
    assert consuming.connection.status == "stopped"
    assert not consuming.connection.is_current(got[1])
    wait_until(lambda: side.depth(side.topology.queue) == 2, 30, "two messages back")
    again = side.consume().wait(2)
    assert [d.body for d in again] == [b"m1", b"m2"] and all(d.redelivered for d in again)


def test_a_lost_connection_redelivers_on_a_new_generation(open_broker):
    side = open_broker()
    _publish(side, 3)
    consuming = side.consume()
    got = consuming.wait(3)
    consuming.connection.ack_many(got[:1])
    time.sleep(QUIET_S)
    side.lose(consuming)
    wait_until(lambda: len(consuming.received) >= 5, 60, "the redeliveries")
    again = consuming.wait(5)[3:]
    assert [d.body for d in again] == [b"m1", b"m2"]
    assert all(d.redelivered and d.generation == 2 for d in again)
    assert not consuming.connection.is_current(got[1])
    assert consuming.connection.is_current(again[0])
    consuming.connection.ack_many(got[1:])  # of the lost channel: not settled
    consuming.wait(5)
    consuming.connection.ack_many(again)
    time.sleep(QUIET_S)
    consuming.stop()
    assert side.depth(side.topology.queue) == 0


def test_a_copy_no_queue_takes_reopens_the_channel(open_broker):
    side = open_broker()
    _publish(side, 1)
    consuming = side.consume()
    (first,) = consuming.wait(1)
    consuming.connection.forward(first, side.topology.queue + ".missing", first.body,
                                 first.properties)
    wait_until(lambda: len(consuming.received) == 2, 60, "the original redelivered")
    again = consuming.received[1]
    assert again.body == b"m0" and again.redelivered and again.generation == 2


def test_pause_holds_back_deliveries_until_resume(open_broker):
    side = open_broker()
    consuming = side.consume()
    consuming.connection.pause()
    wait_until(lambda: consuming.connection.status == "paused", 30, "paused")
    _publish(side, 3)
    consuming.wait(0)
    consuming.connection.resume()
    assert [d.body for d in consuming.wait(3)] == [b"m0", b"m1", b"m2"]
    assert consuming.connection.status == "consuming"


def test_stopping_ends_within_the_grace_period(open_broker):
    side = open_broker()
    _publish(side, 2)
    consuming = side.consume()
    consuming.wait(2)
    consuming.connection.begin_stop(0.3)
    consuming.runner.join(timeout=10)
    assert not consuming.runner.is_alive() and consuming.connection.status == "stopped"
    wait_until(lambda: side.depth(side.topology.queue) == 2, 30, "both messages back")


def test_periodic_tasks_run_on_the_connections_thread(open_broker):
    consuming = open_broker().consume()
    ticks: list = []
    consuming.connection.every(0.05, lambda: ticks.append(threading.current_thread()))
    wait_until(lambda: len(ticks) >= 3, 30, "three ticks")
    assert set(ticks) == {consuming.runner}


def test_one_routing_key_lands_in_one_partition_with_one_active_consumer(open_broker):
    side = open_broker(partitions=2)
    for key in ("k0", "k1", "k2", "k3"):
        _publish(side, 3, routing_key=key, prefix=key)
    active = side.consume(prefetch=20)
    standby = side.consume(prefetch=20)
    got = active.wait(12)
    for key in ("k0", "k1", "k2", "k3"):
        mine = [d for d in got if d.routing_key == key]
        assert [d.body for d in mine] == [f"{key}{n}".encode() for n in range(3)]
        assert len({d.queue for d in mine}) == 1
    assert standby.received == []
    active.stop()
    assert len(standby.wait(12)) == 12  # handed over, redelivered


def test_quorum_queues_count_redeliveries_up_to_the_delivery_limit(open_broker):
    side = open_broker(queue_type="quorum", delivery_limit=1)
    topology = side.topology
    _publish(side, 1)
    first = side.consume()
    (d1,) = first.wait(1)
    assert d1.headers.get("x-delivery-count", 0) == 0 and not d1.redelivered
    first.stop()
    second = side.consume()
    (d2,) = second.wait(1)
    assert d2.headers["x-delivery-count"] == 1 and d2.redelivered
    second.stop()
    wait_until(lambda: side.depth(topology.dead_letter_queue) == 1, 30, "the dead letter")
    (dead,) = side.messages(topology.dead_letter_queue)
    assert dead.body == b"m0" and dead.headers["x-first-death-reason"] == "delivery_limit"
    assert side.depth(topology.queue) == 0
