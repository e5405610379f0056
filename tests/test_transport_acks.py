"""The consumer transport against the real broker: acks it holds back (the prefetch window
shows whether an ack reached the broker, a held one frees no slot, and what is ready in the
queue after the connection closed shows which deliveries were never acked); several broker
URLs, of which only some answer; a subscription the broker cancels; quorum queues."""
from __future__ import annotations

import logging
import threading
import time
import uuid as _uuid

import pika
import pytest

from queue_helpers import delete_topology, drain, free_port, queue_depth, wait_until

from reactor.domain.errors import ConfigError
from reactor.broker.publisher import OutgoingMessage, publish
from reactor.broker.confirming import ConfirmingPublisher
from reactor.broker.consumer_transport import ConsumerTransport
from reactor.broker.endpoints import Endpoints, broker_urls
from reactor.broker.topology import Topology
from reactor.domain.tokens import mask_url

PREFETCH = 5
MESSAGES = 20


@pytest.fixture
def consuming(amqp_url):
    """A running transport on a fresh topology holding ``MESSAGES`` messages; yields
    (transport, deliveries received so far, topology)."""
    tag = "t" + _uuid.uuid4().hex[:10]
    topology = Topology(f"{tag}.x", f"{tag}.q", f"{tag}.dead", f"{tag}.retry")
    received: list = []
    transport = ConsumerTransport(amqp_url, topology, topology.main_queues, PREFETCH,
                                  received.append)
    runner = threading.Thread(target=transport.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: transport.status == "consuming", 30, "the transport consuming")
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        for n in range(MESSAGES):
            channel.basic_publish("", topology.queue, f"m{n}".encode())
        connection.close()
        yield transport, received, topology
    finally:
        transport.close()
        runner.join(timeout=30)
        delete_topology(amqp_url, [topology.queue, topology.retry_queue_for(topology.queue),
                                   topology.dead_letter_queue], [topology.exchange])


def _settles(received: list, count: int) -> None:
    """Wait until ``count`` deliveries arrived, then long enough for the broker to have sent
    more had the window allowed it (a few hundred times its usual delivery latency)."""
    wait_until(lambda: len(received) >= count, 30, f"{count} deliveries")
    time.sleep(0.5)


def test_held_acks_free_no_prefetch_slot_until_sent(consuming):
    transport, received, _topology = consuming
    _settles(received, PREFETCH)
    assert len(received) == PREFETCH
    transport.ack_many(received[:PREFETCH], now=False)
    _settles(received, PREFETCH)
    assert len(received) == PREFETCH  # held: the broker still counts the window as full
    transport.send_acks()
    _settles(received, 2 * PREFETCH)
    assert len(received) == 2 * PREFETCH


def test_close_sends_held_acks_first(consuming, amqp_url):
    transport, received, topology = consuming
    _settles(received, PREFETCH)
    after = threading.Event()
    transport.ack_many(received[:3], after=after.set, now=False)
    transport.close()
    wait_until(lambda: transport.status == "stopped", 30, "the transport stopped")
    assert after.is_set()
    # The 3 acked are gone; the 2 delivered but never acked are back, with the 15 never sent.
    wait_until(lambda: queue_depth(amqp_url, topology.queue) == MESSAGES - 3, 30,
               f"{MESSAGES - 3} messages ready again")


# --------------------------------------------------------------------- several broker URLs
class _InOrder:
    """Stands in for the shuffle of ``Endpoints``: the URLs are tried in the order given."""

    @staticmethod
    def shuffle(items: list) -> None:
        """Leave ``items`` as they are."""


def _dead_urls(count: int) -> list[str]:
    # Nothing listens on a port just found free: connecting is refused at once.
    return [f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F" for _ in range(count)]


def test_endpoints_go_round_the_urls_and_count_a_round_of_failures():
    urls = _dead_urls(3)
    endpoints = Endpoints(",".join(urls), rng=_InOrder())
    assert endpoints.urls == [mask_url(u) for u in urls] and "guest:***@" in endpoints.url
    assert [endpoints.failed() for _ in range(6)] == [False, False, True] * 2
    endpoints.failed()
    endpoints.worked()  # a success starts the count again
    assert [endpoints.failed() for _ in range(3)] == [False, False, True]
    with pytest.raises(ConfigError, match="broker_url is empty"):
        broker_urls(" , ")


def test_clients_skip_the_urls_that_do_not_answer(amqp_url, caplog):
    caplog.set_level(logging.INFO, logger="reactor")
    tag = "t" + _uuid.uuid4().hex[:10]
    topology = Topology(f"{tag}.x", f"{tag}.q", f"{tag}.dead", f"{tag}.retry")
    urls = _dead_urls(2) + [amqp_url]
    received: list = []
    # The dead ones first: the consumer must go past both.
    transport = ConsumerTransport(Endpoints(",".join(urls), rng=_InOrder()), topology,
                                  topology.main_queues, PREFETCH, received.append)
    runner = threading.Thread(target=transport.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: transport.status == "consuming", 60, "the transport consuming")
        assert transport.url == mask_url(amqp_url)
        with ConfirmingPublisher(Endpoints(",".join(urls), rng=_InOrder()), topology) as first:
            assert first.url == mask_url(amqp_url)
        # Shuffled, as configured: whatever the order, every message is confirmed.
        messages = [OutgoingMessage(f"m{n}", f'{{"n": {n}}}'.encode(), "", f"{tag}.{n}")
                    for n in range(5)]
        for _ in range(3):
            report = publish(",".join(urls), topology, messages)
            assert report.ok and report.confirmed == 5, report
        wait_until(lambda: len(received) >= PREFETCH, 30, "deliveries from the live broker")
    finally:
        transport.close()
        runner.join(timeout=30)
        delete_topology(amqp_url, [topology.queue, topology.retry_queue,
                                   topology.dead_letter_queue], [topology.exchange])
    assert caplog.text.count("cannot connect to amqp://guest:***@127.0.0.1:") >= 2
    assert ":guest@" not in caplog.text, "a broker password reached a log line"


def _queue_exists(url: str, queue: str) -> bool:
    try:
        queue_depth(url, queue)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False


@pytest.mark.parametrize("declared_again", [True, False], ids=["same-queue", "queue-gone"])
def test_a_subscription_the_broker_cancels_is_taken_up_again(consuming, amqp_url, caplog,
                                                             declared_again):
    caplog.set_level(logging.INFO, logger="reactor")
    transport, received, topology = consuming
    _settles(received, PREFETCH)
    # Deleting the queue makes the broker cancel our subscription (basic.cancel). Declared
    # again at once, it is usually there when the transport subscribes again on its channel.
    # Left deleted, subscribing fails (404: the broker closes the channel), and the transport
    # reconnects, which declares the queue again. Either way it consumes again.
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.queue_delete(topology.queue)
        if declared_again:
            channel.queue_declare(topology.queue, durable=True,
                                  arguments={"x-queue-type": "classic"})
            channel.queue_bind(topology.queue, topology.exchange)
        wait_until(lambda: "cancelled our subscription" in caplog.text, 30,
                   "the transport to see the cancel")
        wait_until(lambda: _queue_exists(amqp_url, topology.queue), 60,
                   "the queue declared again")
        for n in range(3):
            channel.basic_publish("", topology.queue, f"after{n}".encode())
    finally:
        connection.close()
    wait_until(lambda: sum(d.body.startswith(b"after") for d in received) == 3, 60,
               "the three messages sent after the cancel")
    assert transport.status == "consuming"


# --------------------------------------------------------------------------- quorum queues
def test_quorum_declarations_and_classic_ones_unchanged():
    classic = {"x-queue-type": "classic"}
    assert Topology("x", "q", "d", "r", delivery_limit=4).declarations() == [
        ("exchange_declare", dict(exchange="x", exchange_type="fanout", durable=True)),
        ("queue_declare", dict(queue="d", durable=True, arguments=classic)),
        ("queue_declare", dict(queue="q", durable=True, arguments=classic)),
        ("queue_bind", dict(queue="q", exchange="x", routing_key="")),
        ("queue_declare", dict(queue="r", durable=True, arguments={
            **classic, "x-message-ttl": 1000, "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "q"}))]
    steps = Topology("x", "q", "d", "r", "quorum", 300, delivery_limit=4).declarations()
    queues = {kw["queue"]: kw for method, kw in steps if method == "queue_declare"}
    assert all(kw["durable"] and "exclusive" not in kw and "auto_delete" not in kw
               and kw["arguments"]["x-queue-type"] == "quorum" for kw in queues.values())
    assert queues["d"]["arguments"] == {"x-queue-type": "quorum"}  # browsed: no limit
    assert queues["q"]["arguments"] == {
        "x-queue-type": "quorum", "x-delivery-limit": 4, "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "d", "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish"}
    assert queues["r"]["arguments"]["x-dead-letter-routing-key"] == "q"
    assert queues["r"]["arguments"]["x-dead-letter-strategy"] == "at-least-once"
    parts = Topology("x", "q", "d", "r", "quorum", 300, 2, delivery_limit=4).declarations()
    p0 = next(kw for m, kw in parts if m == "queue_declare" and kw["queue"] == "q.p0")
    assert p0["arguments"]["x-single-active-consumer"] is True
    assert p0["arguments"]["x-delivery-limit"] == 4


def test_a_message_that_keeps_killing_its_consumer_is_dead_lettered_by_the_broker(amqp_url):
    tag = "t" + _uuid.uuid4().hex[:10]
    # max_attempts 3: one delivery and two redeliveries.
    topology = Topology(f"{tag}.x", f"{tag}.q", f"{tag}.dead", f"{tag}.retry", "quorum",
                        delivery_limit=2)
    try:
        with ConfirmingPublisher(amqp_url, topology) as publisher:
            publisher.publish(topology.exchange, "", b"poison", {"message_id": f"{tag}.1"})
        counts = []
        for _ in range(5):
            # A consumer that takes the message and dies without settling it.
            connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
            method, props, _body = connection.channel().basic_get(topology.queue)
            connection.close()
            if method is None:
                break
            counts.append((props.headers or {}).get("x-delivery-count"))
        dead = drain(amqp_url, topology.dead_letter_queue)
    finally:
        delete_topology(amqp_url, [topology.queue, topology.retry_queue,
                                   topology.dead_letter_queue], [topology.exchange])
    assert len(counts) == 3 and counts[1:] == [1, 2], counts  # the consumer adds these
    assert [d.body for d in dead] == [b"poison"]
    assert dead[0].headers["x-first-death-reason"] == "delivery_limit"
    # ``reactor deadletters`` names it as the reactor would have: its attempts ran out.
    from reactor.ops.deadletters import from_queued
    from reactor.broker.browse import QueuedMessage

    letter = from_queued(QueuedMessage(0, dead[0].body, {"headers": dead[0].headers},
                                       dead[0].routing_key, topology.exchange, False))
    assert letter.reason == "retries_exhausted"
