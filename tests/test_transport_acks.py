"""Acks the consumer transport holds back, against the real broker: the prefetch window shows
whether an ack reached the broker (a held one frees no slot), and what is ready in the queue
after the connection closed shows which deliveries were never acked."""
from __future__ import annotations

import threading
import time
import uuid as _uuid

import pika
import pytest

from queue_helpers import delete_topology, queue_depth, wait_until

from reactor.transport import ConsumerTransport, Topology

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
