"""The face of tests/test_consumer_contract.py: a ``Consumer`` running on a thread with the
in-process runner and an embedded SQLite store, on the in-memory broker or on RabbitMQ, with
what the cases need to drive and inspect it (publish, queues and their headers, depth,
unacked, the store switched off, stop and exit code)."""
from __future__ import annotations

import subprocess
import threading
import time
import uuid as _uuid
from pathlib import Path
from typing import Any, Callable

from conftest import missing
from queue_helpers import delete_topology, event, make_jobs, queue_depth, wait_until
from reactor.app import App
from reactor.broker.browse import QueuedMessage, browse
from reactor.broker.confirming import ConfirmingPublisher
from reactor.broker.consumer_transport import connection_factory
from reactor.broker.memory import MemoryBroker
from reactor.broker.topology import Topology
from reactor.consume.consumer import Consumer
from reactor.consume.settle import Limits
from reactor.domain.errors import StoreUnavailable
from reactor.engine.runner import InProcessRunner

SECRET = "contract-test-secret-" + "z" * 20  # test-only secret, never a deployment value
# Quick in-process retries and short probe waits, so an outage is noticed and ridden out in
# well under a second instead of the production backoff.
QUICK = {"local_retries": 2, "local_wait_max_s": 0.1, "probe_wait_max_s": 0.3}
MEMORY_RETRY_DELAY_MS = 600_000  # the memory broker releases retries when told to, not by TTL
RABBIT_RETRY_DELAY_MS = 300      # RabbitMQ has no such switch: a short TTL does it


class StoreSwitch:
    """The App's store behind a switch: while ``down``, every call raises StoreUnavailable (as
    an unreachable server does); calls about a job in ``broken`` raise a bug's error; commits
    take ``commit_delay_s`` longer (so a case can catch work in flight)."""

    def __init__(self, store: Any):
        self.real = store
        self.down = threading.Event()
        self.broken: set[str] = set()
        self.commit_delay_s = 0.0
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if not callable(attr) or name == "close":
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down.is_set():
                self.refused += 1
                raise StoreUnavailable("the store is switched off by the test")
            if self.broken and self.broken & _uuids_in(name, args):
                raise RuntimeError(f"{name}: this job's record cannot be read (a bug)")
            if name.startswith("commit") and self.commit_delay_s:
                time.sleep(self.commit_delay_s)
            return attr(*args, **kwargs)
        return call


def _uuids_in(name: str, args: tuple) -> set[str]:
    """The job uuids a store call is about (commit_waves takes waves of (uuid, ...) tuples)."""
    if not args:
        return set()
    if name == "commit_waves":
        return {change[0] for wave in args[0] for change in wave}
    if name == "commit_events":
        return {change[0] for change in args[0]}
    return {args[0]} if isinstance(args[0], str) else set()


class Running:
    """One ``Consumer.run`` on its own thread, and its exit code once it returned."""

    def __init__(self, consumer: Consumer, runner: InProcessRunner):
        self.consumer = consumer
        self.runner = runner
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, name="contract-consumer", daemon=True)
        self.thread.start()
        wait_until(lambda: self.status == "consuming" or not self.thread.is_alive(), 60,
                   "the consumer to subscribe")

    def _run(self) -> None:
        self.code = self.consumer.run(install_signals=False)

    @property
    def status(self) -> str:
        """The connection's status (consuming, paused, stopping, stopped, ...)."""
        return self.consumer.connection.status

    def stop(self, timeout_s: float = 60) -> int | None:
        """``request_stop`` (what SIGTERM does), wait for ``run`` to return: its exit code."""
        self.consumer.request_stop()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "run() did not return after request_stop"
        self.runner.close()
        return self.code


class Face:
    """One broker (``memory`` or ``rabbitmq``) on a fresh topology, a fresh App and store, and
    the consumers started on them."""

    def __init__(self, kind: str, workdir: Path, amqp_url: str | None = None, **settings: Any):
        self.kind = kind
        tag = "t" + _uuid.uuid4().hex[:10]
        values = {"store_uri": f"sqlite:///{workdir / 'reactor.db'}", "secret": SECRET,
                  "state_dir": str(workdir / "state"), "exchange": f"{tag}.x",
                  "queue": f"{tag}.q", "dead_letter_queue": f"{tag}.dead",
                  "retry_queue": f"{tag}.retry", "prefetch": 10, "batch_size": 1,
                  "retry_delay_ms": (MEMORY_RETRY_DELAY_MS if kind == "memory"
                                     else RABBIT_RETRY_DELAY_MS), **settings}
        (workdir / "empty.yml").write_text("{}\n")
        env = {"REACTOR_" + k.upper(): str(v) for k, v in values.items()}
        env["REACTOR_CONFIG"] = str(workdir / "empty.yml")  # no repository config.yml
        self.app = App.from_env(env)
        self.store = StoreSwitch(self.app.store)
        self.app.__dict__["store"] = self.store  # the pipeline's Jobs are built on the switch
        self.settings = self.app.settings
        self.topology = Topology.from_settings(self.settings)
        self.url = amqp_url
        self.runs: list[Running] = []
        if kind == "memory":
            self.broker = MemoryBroker(self.topology)
            self.factory = self.broker.connection_factory()
        else:
            self.publisher = ConfirmingPublisher(amqp_url, self.topology)  # declares it
            self.factory = connection_factory(amqp_url, self.topology)

    # --- the consumer ----------------------------------------------------------------------
    def start(self) -> Running:
        """A consumer built as ``reactor consume`` builds it (in-process runner), running."""
        s = self.settings
        runner = InProcessRunner(self.app.pipeline())
        limits = Limits(max_attempts=s.max_attempts, transition_retries=s.transition_retries,
                        **QUICK)
        consumer = Consumer(runner, self.store.ping, self.factory, self.topology, s.prefetch,
                            limits, grace_s=10.0, batch_size=s.batch_size,
                            batch_wait_s=s.batch_wait_ms / 1000)
        self.runs.append(Running(consumer, runner))
        return self.runs[-1]

    # --- messages in -----------------------------------------------------------------------
    def jobs(self, count: int) -> list[tuple[str, str]]:
        """``count`` fresh jobs: (uuid, token) each."""
        return make_jobs(self.app, count, "contract")

    def publish(self, body: bytes, routing_key: str, message_id: str | None = None) -> str:
        """Publish one persistent message to the exchange; its message id."""
        # Short ids: a long hex string looks like a token and is masked in headers.
        message_id = message_id or "msg-" + _uuid.uuid4().hex[:8]
        props = {"message_id": message_id, "delivery_mode": 2, "headers": {}}
        if self.kind == "memory":
            self.broker.publish(self.topology.exchange, routing_key, body, props)
        else:
            self.publisher.publish(self.topology.exchange, routing_key, body, props)
        return message_id

    def send(self, uuid: str, name: str, token: str | None, data: dict | None = None) -> str:
        """Publish one event of job ``uuid`` (routed by its uuid); its message id."""
        return self.publish(event(uuid, name, token, data), uuid)

    def release_delayed(self) -> None:
        """Let waiting delayed retries go back (memory: now; RabbitMQ: their short TTL)."""
        if self.kind == "memory":
            self.broker.release_delayed()

    # --- inspection ------------------------------------------------------------------------
    @property
    def main_queue(self) -> str:
        return self.topology.main_queues[0]

    @property
    def retry_queue(self) -> str:
        return self.topology.retry_queue_for(self.main_queue)

    @property
    def dead_queue(self) -> str:
        return self.topology.dead_letter_queue

    def messages(self, queue: str) -> list[QueuedMessage]:
        """The ready messages of ``queue``, left in place."""
        if self.kind == "memory":
            return self.broker.messages(queue)
        return browse(self.url, queue, 1000)[0]

    def depth(self, queue: str) -> int:
        """Ready messages in ``queue``."""
        if self.kind == "memory":
            return self.broker.depth(queue)
        return queue_depth(self.url, queue)

    def unacked(self, queue: str) -> int:
        """Messages of ``queue`` delivered to a consumer and not settled yet."""
        if self.kind == "memory":
            return self.broker.unacked(queue)
        return _rabbit_unacked(queue)

    def history(self, uuid: str) -> list[dict]:
        """Job ``uuid``'s history after ``create`` (read past the switch)."""
        return self.store.real.get_job(uuid)["history"][1:]

    def names(self, uuid: str) -> list[str]:
        """The event names applied to job ``uuid``, in order."""
        return [entry["name"] for entry in self.history(uuid)]

    def settled_everything(self) -> bool:
        """Nothing ready or unacked in the main queue."""
        return self.depth(self.main_queue) == 0 and self.unacked(self.main_queue) == 0

    def close(self) -> None:
        """Stop every consumer still running, delete the topology, close the store."""
        for run in self.runs:
            if run.thread.is_alive():
                run.stop()
        if self.kind == "rabbitmq":
            self.publisher.close()
            t = self.topology
            delete_topology(self.url, [*t.main_queues, *map(t.retry_queue_for, t.main_queues),
                                       t.dead_letter_queue], [t.exchange])
        self.store.down.clear()
        self.app.close()


def _rabbit_unacked(queue: str) -> int:
    """RabbitMQ's count of unacknowledged messages of ``queue`` (rabbitmqctl: AMQP has none)."""
    try:
        out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name",
                              "messages_unacknowledged"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        missing("rabbitmqctl (to count unacked messages)", str(exc))
    if out.returncode != 0:
        missing("rabbitmqctl (to count unacked messages)", out.stderr.strip()[-400:])
    for line in out.stdout.splitlines():
        name, _, count = line.rpartition("\t")
        if name == queue:
            return int(count)
    raise AssertionError(f"rabbitmqctl lists no queue {queue!r}")


def held(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Assert ``condition`` holds throughout ``seconds`` (checked every 0.1 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert condition(), what
        time.sleep(0.1)
