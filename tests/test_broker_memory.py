"""The in-memory broker on its own, on a clock that only moves when told: deliveries, the
prefetch window, acks, delayed retries coming back after their TTL, dead letters, redelivery on
close and on a lost connection, pause, and what a test can ask of it (the behaviour it shares
with RabbitMQ is checked against both in test_broker_contract.py)."""
from __future__ import annotations

import threading
import time

import pytest

from queue_helpers import wait_until
from reactor.broker.memory import MemoryBroker
from reactor.broker.topology import Topology
from reactor.domain.errors import BrokerError

QUIET_S = 0.1


class Clock:
    """A clock that moves only when the broker is told to ``advance``."""

    def __call__(self) -> float:
        return 0.0


@pytest.fixture
def topology():
    return Topology(retry_delay_ms=1000)


@pytest.fixture
def broker(topology):
    return MemoryBroker(topology, clock=Clock())


class Running:
    """A memory connection running on its own thread, with what it received."""

    def __init__(self, broker: MemoryBroker, prefetch: int = 10, queues=None):
        self.received: list = []
        self.connection = broker.connection_factory("test")(
            queues or broker.topology.main_queues, prefetch, self.received.append)
        self.runner = threading.Thread(target=self.connection.run, daemon=True)
        self.runner.start()
        wait_until(lambda: self.connection.status == "consuming", 10, "consuming")

    def bodies(self, count: int) -> list[bytes]:
        wait_until(lambda: len(self.received) >= count, 10, f"{count} deliveries")
        time.sleep(QUIET_S)
        return [d.body for d in self.received]

    def stop(self) -> None:
        self.connection.close()
        self.runner.join(timeout=10)
        assert not self.runner.is_alive()


@pytest.fixture
def running(broker):
    made: list[Running] = []

    def start(**kwargs) -> Running:
        made.append(Running(broker, **kwargs))
        return made[-1]

    yield start
    for r in made:
        r.stop()


def _publish(broker: MemoryBroker, count: int, key: str = "job") -> None:
    for n in range(count):
        broker.publish(broker.topology.exchange, key, f"m{n}".encode(), {"message_id": str(n)})


def test_published_messages_wait_in_the_main_queue_with_the_publishers_properties(broker):
    broker.publish("reactor", "job", b"a", {"message_id": "1", "user_id": "x", "expiration": "5",
                                            "headers": {"h": 1}})
    (message,) = broker.messages("reactor.events")
    assert (message.body, message.exchange, message.routing_key) == (b"a", "reactor", "job")
    # What a confirming publisher sends: no user id, no expiration, persistent.
    assert message.properties == {"message_id": "1", "headers": {"h": 1}, "delivery_mode": 2}
    assert broker.counts() == {"reactor.dead": 0, "reactor.events": 1, "reactor.retry": 0}


def test_publishing_where_no_queue_takes_it_is_an_error(broker):
    with pytest.raises(BrokerError, match="no exchange or queue"):
        broker.publish("elsewhere", "", b"x")
    with pytest.raises(BrokerError, match="unrouted"):
        broker.publish("", "no.such.queue", b"x")
    broker.publish("", "reactor.dead", b"direct")  # the default exchange: by queue name
    broker.publish("reactor.dead", "", b"straight in")
    assert [m.body for m in broker.messages("reactor.dead")] == [b"direct", b"straight in"]


def test_a_factory_refuses_queues_the_topology_does_not_have(broker):
    with pytest.raises(BrokerError, match="no queue named 'nope'"):
        broker.connection_factory()(["nope"], 1, lambda d: None)


def test_the_prefetch_window_and_acks(broker, running):
    _publish(broker, 5)
    r = running(prefetch=2)
    assert r.bodies(2) == [b"m0", b"m1"]
    assert broker.depth("reactor.events") == 3 and broker.unacked("reactor.events") == 2
    r.connection.ack_many(r.received[:1], now=False)
    assert r.bodies(2) == [b"m0", b"m1"]  # held back: the window is still full
    done = threading.Event()
    r.connection.send_acks(after=done.set)
    assert r.bodies(3)[-1] == b"m2" and done.wait(5)
    assert [d.tag for d in r.received] == [1, 2, 3]


def test_a_retry_waits_its_ttl_then_returns_to_the_main_queue(broker, running):
    _publish(broker, 1)
    r = running()
    r.bodies(1)
    first = r.received[0]
    r.connection.forward(first, "reactor.retry", first.body,
                         {**first.properties, "headers": {"x-reactor-attempts": 1}})
    wait_until(lambda: broker.depth("reactor.retry") == 1, 10, "the copy in the retry queue")
    assert broker.unacked("reactor.events") == 0  # the original was acked
    broker.advance(0.999)
    assert broker.depth("reactor.retry") == 1 and len(r.received) == 1
    broker.advance(0.001)
    assert r.bodies(2) == [b"m0", b"m0"]
    again = r.received[1]
    assert (again.exchange, again.routing_key) == ("", "reactor.events")
    assert again.headers["x-reactor-attempts"] == 1
    assert again.headers["x-death"][0]["reason"] == "expired"


def test_release_delayed_lets_every_waiting_message_expire(broker):
    broker.publish("reactor.retry", "", b"later", {"headers": {"x-death": [
        {"count": 1, "reason": "expired", "queue": "reactor.retry", "exchange": "",
         "routing-keys": ["reactor.retry"]}], "x-first-death-reason": "expired"}})
    broker.release_delayed()
    (back,) = broker.messages("reactor.events")
    (death,) = back.headers["x-death"]
    assert death["count"] == 2 and back.headers["x-first-death-reason"] == "expired"
    assert broker.depth("reactor.retry") == 0


def test_a_dead_letter_is_kept_for_the_operator(broker, running):
    _publish(broker, 1)
    r = running()
    r.bodies(1)
    r.connection.forward(r.received[0], "reactor.dead", b"m0", {"headers": {"why": "bad"}})
    wait_until(lambda: broker.depth("reactor.dead") == 1, 10, "the dead letter")
    assert broker.messages("reactor.dead")[0].headers == {"why": "bad"}
    assert broker.depth("reactor.events") == 0 and broker.unacked("reactor.events") == 0


def test_closing_returns_unsettled_messages_to_their_places(broker, running):
    _publish(broker, 4)
    r = running(prefetch=2)
    r.bodies(2)
    r.connection.ack_many(r.received[1:2])
    assert r.bodies(3) == [b"m0", b"m1", b"m2"]  # the ack made room for one more
    r.stop()
    assert r.connection.status == "stopped" and not r.connection.is_current(r.received[0])
    back = broker.messages("reactor.events")
    assert [(m.body, m.redelivered) for m in back] == [(b"m0", True), (b"m2", True),
                                                       (b"m3", False)]


def test_a_lost_connection_redelivers_on_a_new_generation(broker, running):
    _publish(broker, 2)
    r = running()
    r.bodies(2)
    old = r.received[0]
    broker.drop_connections()
    assert not r.connection.is_current(old)
    assert r.bodies(4)[2:] == [b"m0", b"m1"]
    assert [(d.generation, d.redelivered, d.tag) for d in r.received[2:]] == [(2, True, 1),
                                                                               (2, True, 2)]
    r.connection.ack_many([old])  # of the lost channel: not settled
    time.sleep(QUIET_S)
    assert broker.unacked("reactor.events") == 2 and r.connection.status == "consuming"


def test_a_double_ack_closes_the_channel_as_rabbitmq_does(broker, running):
    _publish(broker, 1)
    r = running()
    r.bodies(1)
    r.connection.ack_many(r.received)
    r.connection.ack_many(r.received)
    time.sleep(QUIET_S)
    assert r.connection.generation == 2 and broker.depth("reactor.events") == 0


def test_pause_and_resume(broker, running):
    r = running()
    r.connection.pause()
    wait_until(lambda: r.connection.status == "paused", 10, "paused")
    _publish(broker, 2)
    assert r.bodies(0) == [] and broker.depth("reactor.events") == 2
    r.connection.resume()
    assert r.bodies(2) == [b"m0", b"m1"] and r.connection.status == "consuming"


def test_a_paused_partition_keeps_its_subscription():
    # A standby would overtake held messages otherwise; the prefetch window bounds the rest.
    topology = Topology(partitions=1)
    broker = MemoryBroker(topology)
    r = Running(broker, prefetch=2)
    try:
        r.connection.pause()
        wait_until(lambda: r.connection.status == "paused", 10, "paused")
        _publish(broker, 3)
        assert r.bodies(2) == [b"m0", b"m1"]
    finally:
        r.stop()


def test_competing_consumers_share_a_queue(broker, running):
    first, second = running(prefetch=1), running(prefetch=1)
    _publish(broker, 2)
    assert first.bodies(1) == [b"m0"] and second.bodies(1) == [b"m1"]


def test_stop_with_grace_and_refusal(broker, running):
    _publish(broker, 1)
    r = running()
    r.bodies(1)
    r.connection.begin_stop(0.2)
    wait_until(lambda: r.connection.status == "stopped", 10, "stopped within the grace")
    assert broker.depth("reactor.events") == 1
    refused = running()
    refused.connection.refuse("broker memory://test refused the connection: 403")
    refused.runner.join(timeout=10)
    assert refused.connection.status == "stopped" and refused.connection.error.endswith("403")
    assert broker.depth("reactor.events") == 1


def test_periodic_tasks_and_failing_callbacks_do_not_stop_the_loop(broker, running, caplog):
    r = running()
    ticks: list[int] = []

    def tick() -> None:
        ticks.append(1)
        raise RuntimeError("a periodic task failed")

    r.connection.every(0.01, tick)
    r.connection.send_acks(after=lambda: 1 / 0)
    wait_until(lambda: len(ticks) >= 3, 10, "three ticks")
    _publish(broker, 1)
    assert r.bodies(1) == [b"m0"]
    assert "periodic task failed" in caplog.text and "after settling" in caplog.text
