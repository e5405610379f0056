"""The consumer's parts without a broker: what each outcome is settled with (``decide``, the
forwarded copy's headers), the worker's one rule for an undecided message with either runner,
and the ack-holding policy, over a connection kept in memory (the consumer is handed a
connection factory, so any ``ConsumingConnection`` will do)."""
from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from queue_helpers import SECRET, event, make_jobs, wait_until
from reactor.app import App, ChildPipeline
from reactor.broker.base import Delivery
from reactor.broker.topology import Topology
from reactor.consume.consumer import Consumer
from reactor.consume.settle import AckHold, Limits, attempt_number, decide, forwarded_properties
from reactor.contract.headers import (ATTEMPTS, FIRST_SEEN, MESSAGE_ID, OUTCOME, REASON,
                                      RETRY_REASON, ROUTING_KEY)
from reactor.domain.outcomes import Action, ActionKind, Kind, Outcome
from reactor.engine.pipeline_process import ChildProcessRunner
from reactor.engine.runner import InProcessRunner

TOPOLOGY = Topology("w.x", "w.q", "w.dead", "w.retry")


class MemoryConnection:
    """A ``ConsumingConnection`` in memory: the test hands it deliveries; what the consumer
    settles is recorded in order (a forwarded copy is acked on its confirm, so it is one step)."""

    def __init__(self, queues: list[str], prefetch: int, on_delivery):
        self.queues, self.prefetch, self.on_delivery = queues, prefetch, on_delivery
        self.status, self.error, self.url = "consuming", None, "memory://"
        self.settled: list[tuple] = []
        self._held: list[Delivery] = []
        self._closed = threading.Event()
        self._lock = threading.Lock()

    def deliver(self, tag: int, body: bytes, message_id: str) -> None:
        self.on_delivery(Delivery(body, tag, 1, self.queues[0], TOPOLOGY.exchange, "key", False,
                                  {"message_id": message_id, "headers": {}}))

    def run(self) -> None:
        self._closed.wait(60)

    def is_current(self, delivery: Delivery) -> bool:
        return True

    def ack_many(self, deliveries, after=None, *, now=True) -> None:
        with self._lock:
            self._held += deliveries
        if now:
            self.send_acks(after)

    def send_acks(self, after=None) -> None:
        with self._lock:
            self.settled += [("ack", d.tag) for d in self._held]
            self._held = []
        if after is not None:
            after()

    def forward(self, delivery, queue, body, properties) -> None:
        with self._lock:
            self.settled.append(("forward", delivery.tag, queue, dict(properties["headers"])))

    def pause(self) -> None:
        self.status = "paused"

    def resume(self) -> None:
        self.status = "consuming"

    def begin_stop(self, grace_s: float) -> None:
        self.status = "stopping"

    def close(self) -> None:
        self.status = "stopped"
        self._closed.set()

    def every(self, seconds: float, fn) -> None:
        pass


@pytest.fixture
def app(sqlite_uri):
    a = App.from_env({"REACTOR_STORE_URI": sqlite_uri, "REACTOR_SECRET": SECRET})
    yield a
    a.close()


def _runner(kind: str, app: App):
    if kind == "in-process":
        return InProcessRunner(app.pipeline())
    return ChildProcessRunner(ChildPipeline(app.settings, separate_commits=False))


@pytest.mark.parametrize("kind", ["in-process", "child"])
def test_an_undecided_message_is_decided_on_its_own_after_its_list_and_in_order(app, kind):
    """A list of four for two jobs, one of which cannot be read (a bug): the other job's
    messages are committed and acked with the list; the broken job's are then decided one by
    one, in delivery order (each a failed attempt, sent to the delayed-retry queue)."""
    (a, ta), (b, tb) = make_jobs(app, 2, "undecided")
    with sqlite3.connect(app.settings.store_uri[len("sqlite:///"):]) as conn:
        conn.execute("UPDATE jobs SET body = '\"not a job record\"' WHERE uuid = ?", (b,))
    runner = _runner(kind, app)
    made = []

    def connect(queues, prefetch, on_delivery):
        made.append(MemoryConnection(queues, prefetch, on_delivery))
        return made[0]

    consumer = Consumer(runner, app.store.ping, connect, TOPOLOGY, 10, Limits(),
                        batch_size=10)
    connection = made[0]
    # All four wait before the worker starts: they go to the runner as one list.
    for tag, (uuid, name, token) in enumerate([(a, "run", ta), (b, "run", tb),
                                               (a, "update", ta), (b, "update", tb)], 1):
        connection.deliver(tag, event(uuid, name, token), f"m{tag}")
    thread = threading.Thread(target=consumer.run, args=(False,))
    thread.start()
    try:
        wait_until(lambda: len(connection.settled) == 4, 60, "all four settled")
    finally:
        consumer.request_stop()
        thread.join(60)
        runner.close()
    assert [s[:3] for s in connection.settled] == [
        ("ack", 1), ("ack", 3), ("forward", 2, "w.retry"), ("forward", 4, "w.retry")]
    for _, _, _, headers in connection.settled[2:]:
        assert headers[RETRY_REASON] == "internal_error" and headers[ATTEMPTS] == 1
        assert OUTCOME not in headers
    assert consumer.counts == {"applied": 2, "retry_later:internal_error": 2}
    assert [h["name"] for h in app.store.get_job(a)["history"]] == ["create", "run", "update"]


def test_acks_are_held_while_more_wait_and_go_out_together():
    connection = MemoryConnection(["q"], 40, None)
    books: list[str] = []
    acks = AckHold(connection, every=3, hold_s=10.0, run_books=lambda bs: [b() for b in bs])
    deliveries = [Delivery(b"{}", tag, 1, "q", "x", "k", False) for tag in (1, 2, 3, 4)]
    acks.hold(deliveries[:2], [lambda: books.append("1"), lambda: books.append("2")])
    acks.after_turn(0.0, waiting=True)   # more wait, two held of three: held
    assert connection.settled == [] and books == []
    acks.hold(deliveries[2:3], [lambda: books.append("3")])
    acks.after_turn(0.0, waiting=True)   # three held: out together, then their books
    assert connection.settled == [("ack", 1), ("ack", 2), ("ack", 3)] and books == ["1", "2", "3"]
    acks.hold(deliveries[3:], [lambda: books.append("4")])
    acks.after_turn(0.0, waiting=False)  # nothing waits: out at once
    assert connection.settled[-1] == ("ack", 4) and books[-1] == "4"
    never = AckHold(connection, every=100, hold_s=0.0, run_books=lambda bs: None)
    never.hold(deliveries[:1], [lambda: None])
    never.after_turn(0.0, waiting=True)  # hold_s 0 (lists on their way): never held
    assert connection.settled[-1] == ("ack", 1)


# --------------------------------------------------------------------------------- decisions
def _delivery(headers=None, body=b"{}", **props) -> Delivery:
    return Delivery(body, 1, 1, "q", "x", "107-key", False,
                    {"headers": dict(headers or {}), "message_id": "m1", **props})


def test_attempt_number_counts_header_and_quorum_redeliveries_and_ignores_garbage():
    assert attempt_number(_delivery()) == 1
    assert attempt_number(_delivery({ATTEMPTS: 2})) == 3
    assert attempt_number(_delivery({ATTEMPTS: 2, "x-delivery-count": 1})) == 4
    for junk in ("7", -5, True, 2.5, None, [1]):
        assert attempt_number(_delivery({ATTEMPTS: junk})) == 1, junk


@pytest.mark.parametrize("outcome, attempt, want", [
    (Outcome(Kind.APPLIED), 1, Action("ack")),
    (Outcome(Kind.DUPLICATE), 9, Action("ack")),
    (Outcome(Kind.REJECTED, "auth_failed", "d"), 1,
     Action(ActionKind.DEAD_LETTER, "auth_failed", "d")),
    (Outcome(Kind.REJECTED, "invalid_transition", "d"), 3,
     Action(ActionKind.RETRY_LATER, "invalid_transition", "d")),
    (Outcome(Kind.REJECTED, "invalid_transition", "d"), 4,
     Action(ActionKind.DEAD_LETTER, "invalid_transition", "d")),
    (Outcome(Kind.RETRY, "internal_error", "d"), 4,
     Action(ActionKind.RETRY_LATER, "internal_error", "d")),
])
def test_decide(outcome, attempt, want):
    assert decide(outcome, attempt, Limits(max_attempts=5, transition_retries=3)) == want


def test_decide_dead_letters_retries_exhausted_at_max_attempts():
    action = decide(Outcome(Kind.RETRY, "store_unavailable", "down"), 5, Limits(max_attempts=5))
    assert action.kind == ActionKind.DEAD_LETTER and action.reason == "retries_exhausted"
    assert "5 attempts" in action.detail and "retry:store_unavailable" in action.detail


def test_forwarded_copy_masks_tokens_and_keeps_origin():
    token = "ab12" + "c" * 28
    d = _delivery({"token": token, "X-Auth-Token": token, "keep": "yes", "x-delivery-count": 2},
                  body=json.dumps({"token": token}).encode())
    props = forwarded_properties(d, Action(ActionKind.DEAD_LETTER, "auth_failed",
                                           f'token "{token}" bad'),
                                 2, "rejected:auth_failed", now="2026-01-01T00:00:00.000Z")
    h = props["headers"]
    assert token not in json.dumps(props)
    assert h["keep"] == "yes" and h[REASON] == "auth_failed" and h[ATTEMPTS] == 2
    assert h[ROUTING_KEY] == "107-key" and h[MESSAGE_ID] == "m1" and props["message_id"] == "m1"
    assert "x-delivery-count" not in h, "the broker's own redelivery count must not be copied"
    again = forwarded_properties(Delivery(b"{}", 2, 1, "q", "", "q", False, props),
                                 Action(ActionKind.RETRY_LATER, "timeout"), 3, "retry:timeout")
    assert again["headers"][ROUTING_KEY] == "107-key", "the first routing key is kept"
    assert again["headers"][FIRST_SEEN] == "2026-01-01T00:00:00.000Z"
