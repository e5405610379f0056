"""The two brokers of tests/test_broker_contract.py behind one face: the in-memory broker, and
RabbitMQ consumed through ``ConsumerTransport`` by way of a TCP relay (so a case can cut the
connection), with a consuming connection running on its own thread."""
from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit, urlunsplit

from queue_helpers import delete_topology, free_port, queue_depth, wait_until
from reactor.broker.browse import browse
from reactor.broker.confirming import ConfirmingPublisher
from reactor.broker.consumer_transport import connection_factory
from reactor.broker.memory import MemoryBroker
from reactor.broker.topology import Topology

QUIET_S = 0.5  # long enough for a broker to have sent more, had the window allowed it


class Consuming:
    """A connection from a factory, running on its own thread, and what it received."""

    def __init__(self, factory, queues: list[str], prefetch: int):
        self.received: list = []
        self.threads: set = set()
        self.connection = factory(queues, prefetch, self._got)
        self.runner = threading.Thread(target=self.connection.run, daemon=True)
        self.runner.start()
        wait_until(lambda: self.connection.status == "consuming", 60, "consuming")

    def _got(self, delivery) -> None:
        self.threads.add(threading.current_thread())
        self.received.append(delivery)

    def wait(self, count: int) -> list:
        """The first ``count`` deliveries, once that many arrived and no more came."""
        wait_until(lambda: len(self.received) >= count, 60, f"{count} deliveries")
        time.sleep(QUIET_S)
        assert len(self.received) == count, [d.body for d in self.received]
        return list(self.received)

    def stop(self) -> None:
        """Close and wait for ``run`` to end."""
        self.connection.close()
        self.runner.join(timeout=30)
        assert not self.runner.is_alive()


class Side:
    """A broker under test, on one topology: what the cases need of it."""

    factory: object

    def __init__(self, topology: Topology):
        self.topology = topology
        self.runs: list[Consuming] = []

    def consume(self, prefetch: int = 10) -> Consuming:
        """A running connection to the main queues."""
        self.runs.append(Consuming(self.factory, self.topology.main_queues, prefetch))
        return self.runs[-1]

    def close(self) -> None:
        """Close every connection opened."""
        for consuming in self.runs:
            consuming.connection.close()
            consuming.runner.join(timeout=30)


class MemorySide(Side):
    """The memory broker."""

    def __init__(self, topology: Topology):
        super().__init__(topology)
        self.broker = MemoryBroker(topology)
        self.factory = self.broker.connection_factory()

    def publish(self, exchange: str, routing_key: str, body: bytes, props: dict) -> None:
        """Publish one message."""
        self.broker.publish(exchange, routing_key, body, props)

    def depth(self, queue: str) -> int:
        """Ready messages in ``queue``."""
        return self.broker.depth(queue)

    def messages(self, queue: str) -> list:
        """The ready messages of ``queue``, left in place."""
        return self.broker.messages(queue)

    def lose(self, consuming: Consuming) -> None:
        """Lose the connection of ``consuming``."""
        consuming.connection.lose()


class _Proxy:
    """A TCP relay to the broker, so a test can cut every connection through it at once."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = free_port()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        _shut(source, sink)

    def drop(self) -> None:
        """Cut every connection made so far (new ones are relayed again)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            _shut(*pair)

    def close(self) -> None:
        """Stop relaying."""
        self._server.close()
        self.drop()


def _shut(*sockets: socket.socket) -> None:
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class RabbitSide(Side):
    """RabbitMQ, consumed through ``ConsumerTransport`` by way of a relay."""

    def __init__(self, url: str, topology: Topology):
        super().__init__(topology)
        self.url = url
        parts = urlsplit(url)
        self.proxy = _Proxy(parts.hostname, parts.port or 5672)
        userinfo = parts.netloc.rpartition("@")[0]
        relayed = urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{self.proxy.port}"))
        self.factory = connection_factory(relayed, topology)
        self.publisher = ConfirmingPublisher(url, topology)  # declares the topology

    def publish(self, exchange: str, routing_key: str, body: bytes, props: dict) -> None:
        """Publish one message, confirmed."""
        self.publisher.publish(exchange, routing_key, body, props)

    def depth(self, queue: str) -> int:
        """Ready messages in ``queue``."""
        return queue_depth(self.url, queue)

    def messages(self, queue: str) -> list:
        """The ready messages of ``queue``, left in place."""
        return browse(self.url, queue, 1000)[0]

    def lose(self, consuming: Consuming) -> None:
        """Cut the connection (the relay drops it)."""
        self.proxy.drop()

    def close(self) -> None:
        """Close the connections and delete the topology."""
        super().close()
        self.publisher.close()
        self.proxy.close()
        t = self.topology
        delete_topology(self.url, [*t.main_queues, *map(t.retry_queue_for, t.main_queues),
                                   t.dead_letter_queue],
                        [t.exchange] + ([t.hash_exchange] if t.partitions else []))
