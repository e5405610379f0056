"""Group commit in the consumer: each message settled only after the commit of its list, with a
real RabbitMQ (``reactor consume`` as a subprocess, and the consumer in process)."""
from __future__ import annotations

import pytest

from reactor.engine.pipeline import Pipeline

@pytest.fixture
def batch_setup(amqp_url, mongo_store_uri, tmp_path):
    from queue_helpers import QueueSetup

    s = QueueSetup(amqp_url, mongo_store_uri, tmp_path,
                   overrides={"batch_size": 20, "batch_wait_ms": 200, "transition_retries": 0})
    yield s
    s.close()


@pytest.mark.rabbitmq
@pytest.mark.mongo
def test_consumer_group_commit_settles_each_message_after_the_commit(batch_setup):
    from queue_helpers import (drain, event, make_jobs, queue_depth, stop, total_depth,
                               wait_until)
    from reactor.contract.headers import ATTEMPTS, REASON
    from reactor.broker.publisher import OutgoingMessage, publish

    setup = batch_setup
    jobs = make_jobs(setup.app, 4, "batch")
    (a, ta), (b, tb), (c, tc), (d, td) = jobs
    sent = [("run-a", a, event(a, "run", ta)), ("run-b", b, event(b, "run", tb)),
            ("run-c", c, event(c, "run", tc)), ("upd-a", a, event(a, "update", ta, {"n": 1})),
            ("run-a", a, event(a, "run", ta)),                  # same id again: a duplicate
            ("bad-token", d, event(d, "run", "not-the-token")),
            ("too-early", b, event(b, "validate", tb)),         # invalid from RUNNING
            ("garbage", c, b"{not json"),
            ("fin-c", c, event(c, "finish", tc)), ("upd-b", b, event(b, "update", tb))]
    report = publish(setup.amqp_url, setup.topology,
                     [OutgoingMessage(f"msg {i}", body, key, mid)
                      for i, (mid, key, body) in enumerate(sent)])
    assert report.ok
    proc = setup.start_consumer()
    dead = setup.names["dead_letter_queue"]
    wait_until(lambda: queue_depth(setup.amqp_url, dead) == 3, 120, "three dead letters")
    wait_until(lambda: sum(len(setup.app.store.get_job(u)["history"]) for u, _ in jobs) == 10,
               120, "six events applied")
    assert stop(proc) == 0, setup.logs()
    # Nothing was left unsettled: unacked messages would be back in the queues now.
    assert total_depth(setup.amqp_url, [setup.names["queue"], setup.names["retry_queue"]]) == 0
    letters = {g.properties.message_id: g.headers for g in drain(setup.amqp_url, dead)}
    assert {k: h[REASON] for k, h in letters.items()} == {
        "bad-token": "auth_failed", "too-early": "invalid_transition",
        "garbage": "decode_error"}
    assert all(h[ATTEMPTS] == 1 for h in letters.values())
    store = setup.app.store
    assert [store.get_job(u)["state"] for u, _ in jobs] == \
        ["RUNNING", "RUNNING", "FINISHED", "CREATED"]
    history = {u: store.get_job(u)["history"] for u, _ in jobs}
    assert [h["name"] for h in history[a]] == ["create", "run", "update"]
    assert [h["name"] for h in history[b]] == ["create", "run", "update"]
    assert [h["name"] for h in history[c]] == ["create", "run", "finish"]
    # The first events of a, b and c went to the store in one write (one date per write).
    assert history[a][1]["date"] == history[b][1]["date"] == history[c][1]["date"]
    logs = setup.logs()
    assert logs.count("reactor.consume.consumer duplicate:") == 1
    assert logs.count("reactor.consume.consumer applied:") == 6


def test_a_bad_batch_size_is_a_start_up_error_naming_the_key():
    from reactor.consume.consumer import Consumer
    from reactor.consume.settle import Limits
    from reactor.domain.errors import ConfigError
    from reactor.broker.topology import Topology

    def connect(*args):
        raise AssertionError("connecting before the configuration was checked")

    with pytest.raises(ConfigError, match="bad value for 'batch_size': 0"):
        Consumer(None, lambda: None, connect, Topology(), 10, Limits(), batch_size=0)


class CountingStore:
    """A real store that counts the commits made through it, one by one or in batches."""

    def __init__(self, store):
        self.store = store
        self.calls = {"commit_event": 0, "commit_events": 0, "commit_waves": 0,
                      "batched_changes": 0}

    def __getattr__(self, name):
        return getattr(self.store, name)

    def commit_event(self, *args, **kwargs):
        self.calls["commit_event"] += 1
        return self.store.commit_event(*args, **kwargs)

    def commit_events(self, changes, *args, **kwargs):
        self.calls["commit_events"] += 1
        self.calls["batched_changes"] += len(changes)
        return self.store.commit_events(changes, *args, **kwargs)

    def commit_waves(self, waves, *args, **kwargs):
        self.calls["commit_waves"] += 1
        self.calls["batched_changes"] += sum(len(wave) for wave in waves)
        return self.store.commit_waves(waves, *args, **kwargs)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("batch_size", [1, None], ids=["batch_size-1", "default"])
def test_batch_size_one_commits_each_message_alone_and_the_default_groups_them(
        amqp_url, sqlite_uri, tmp_path, batch_size):
    import threading

    from queue_helpers import (QueueSetup, Workload, connection_factory, make_jobs, total_depth,
                               wait_until)
    from reactor.consume.consumer import Consumer
    from reactor.consume.settle import Limits
    from reactor.engine.jobs import Jobs
    from reactor.engine.runner import InProcessRunner

    setup = QueueSetup(amqp_url, sqlite_uri, tmp_path)
    try:
        app = setup.app
        size = batch_size or app.settings.batch_size
        work = Workload.build(make_jobs(app, 8, "paths"), 6)
        work.publish(setup)
        store = CountingStore(app.store)
        pipeline = Pipeline(Jobs(store, app.authority), app.settings.max_message_bytes)
        consumer = Consumer(InProcessRunner(pipeline), store.ping,
                            connection_factory(setup.amqp_url, setup.topology), setup.topology,
                            app.settings.prefetch, Limits.from_settings(app.settings),
                            batch_size=size)
        thread = threading.Thread(target=consumer.run, args=(False,))
        thread.start()
        try:
            wait_until(lambda: consumer.counts["applied"] == work.sent, 60, "every event acked")
        finally:
            consumer.request_stop()
            thread.join(60)
        counts = f"sent={work.sent} batch_size={size} counts={dict(consumer.counts)} " \
                 f"store_calls={store.calls}"
        work.check(app, counts)
        assert total_depth(setup.amqp_url, setup.queue_names()) == 0, counts
        if batch_size == 1:  # the one-by-one path: one compare-and-set write per message
            assert store.calls == {"commit_event": work.sent, "commit_events": 0,
                                   "commit_waves": 0, "batched_changes": 0}, counts
        else:  # group commit is the default: every event went to the store in a batch
            assert size > 1, counts
            assert store.calls["commit_event"] == 0, counts
            assert store.calls["batched_changes"] == work.sent, counts
            # One store write per batch, whatever number of waves: fewer writes than events.
            assert 0 < store.calls["commit_waves"] < work.sent, counts
    finally:
        setup.close()

