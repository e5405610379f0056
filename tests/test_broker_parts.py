"""Small parts of the broker package that need no broker: URL password masking, the capped
backoff between reconnects, and the factory the consumer is handed."""
from __future__ import annotations

import pytest

from reactor.broker.base import ConnectionFactory
from reactor.broker.consumer_transport import ConsumerTransport, connection_factory
from reactor.broker.failures import Waits, capped_backoff
from reactor.broker.topology import Topology
from reactor.domain.tokens import mask_url


@pytest.mark.parametrize("text, masked", [
    ("amqp://guest:guest@127.0.0.1:5672/%2F", "amqp://guest:***@127.0.0.1:5672/%2F"),
    ("amqp://a:p@h1,amqps://b:q@h2/v", "amqp://a:***@h1,amqps://b:***@h2/v"),
    ("mongodb://u:p@h1,h2/db?authSource=admin", "mongodb://u:***@h1,h2/db?authSource=admin"),
    ("mongodb+srv://u:p@ss@host/db", "mongodb+srv://u:***@host/db"),  # an unencoded "@"
    ("amqp://u:p,q@host", "amqp://u:***@host"),
    ("amqp://:secret@host", "amqp://:***@host"),
    ("amqp://guest@host/", "amqp://guest@host/"),  # no password: unchanged
    ("amqp://host/x@y", "amqp://host/x@y"),        # an "@" in the path is not user info
    ("cannot connect to amqp://u:pw@h:5672/: refused (guest@h)",
     "cannot connect to amqp://u:***@h:5672/: refused (guest@h)"),
    ("no URL here", "no URL here"),
])
def test_mask_url_hides_every_password(text, masked):
    assert mask_url(text) == masked


def test_backoff_waits_double_up_to_the_cap_half_fixed_half_random():
    waits = Waits(capped_backoff(0.5, 4.0))
    seen = [waits.next() for _ in range(6)]
    for wait, full in zip(seen, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]):
        assert full / 2 <= wait <= full
    waits.reset()
    assert 0.25 <= waits.next() <= 0.5


def test_the_factory_builds_transports_for_the_queues_asked():
    topology = Topology(partitions=2)
    factory: ConnectionFactory = connection_factory("amqp://u:secret@localhost/", topology)
    transport = factory(topology.main_queues[1:], 7, lambda delivery: None)
    assert isinstance(transport, ConsumerTransport)
    assert transport.queues == ["reactor.events.p1"] and transport.prefetch == 7
    assert transport.url == "amqp://u:***@localhost/" and transport.status == "starting"
