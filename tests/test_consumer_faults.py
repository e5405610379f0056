"""The consumer under faults, as a real ``reactor consume`` subprocess: kill -9, broker restart,
store outage, SIGTERM, several consumers. Every test states its counts when it fails."""
from __future__ import annotations

import json
import random
import shutil
import time

import pytest

from conftest import missing
from queue_helpers import (PrivateBroker, QueueSetup, Workload, count_lines, make_jobs,
                           queue_depth, start_private_ferretdb, stop, total_depth, wait_until)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.mongo]


@pytest.fixture
def setup(amqp_url, mongo_store_uri, tmp_path):
    s = QueueSetup(amqp_url, mongo_store_uri, tmp_path)
    yield s
    s.close()


def _counts(setup: QueueSetup, work: Workload, **extra) -> str:
    logs = setup.logs()
    dead = queue_depth(setup.amqp_url, setup.names["dead_letter_queue"])
    parts = {"sent": work.sent, "applied": work.applied(setup.app),
             "applied_log": count_lines(logs, "applied:"),
             "duplicates": count_lines(logs, "duplicate:"), "dead_lettered": dead, **extra}
    return " ".join(f"{k}={v}" for k, v in parts.items())


def _main_depth(setup: QueueSetup) -> int:
    return total_depth(setup.amqp_url, setup.topology.main_queues)


def _finish(setup: QueueSetup, work: Workload, timeout_s: float = 300) -> None:
    """Wait until the queues are empty and every event is in the store."""
    wait_until(lambda: _main_depth(setup) == 0, timeout_s, "the main queue to drain")
    wait_until(lambda: work.applied(setup.app) == work.sent, timeout_s,
               f"all {work.sent} events applied", interval_s=1.0)


def _assert_clean(setup: QueueSetup, counts: str) -> None:
    assert queue_depth(setup.amqp_url, setup.names["dead_letter_queue"]) == 0, counts
    assert total_depth(setup.amqp_url, setup.queue_names()) == 0, \
        f"messages left in a queue (unacked ones return when the consumer is gone): {counts}"


@pytest.mark.slow
def test_kill_9_at_random_moments_gives_exactly_once_in_order_effects(setup):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    work = Workload.build(make_jobs(setup.app, 100, "crash"), 50)
    assert work.sent == 5000
    work.publish(setup)
    queue = setup.names["queue"]
    kills = 0
    proc = setup.start_consumer()
    for threshold in sorted(rng.sample(range(300, 4700), 6), reverse=True):
        wait_until(lambda: queue_depth(setup.amqp_url, queue) <= threshold, 300,
                   f"progress below {threshold} ready messages (kill {kills + 1})")
        time.sleep(rng.uniform(0, 0.4))
        proc.kill()  # SIGKILL: no drain, no goodbye; unacked deliveries return to the queue
        proc.wait()
        kills += 1
        proc = setup.start_consumer()
    _finish(setup, work)
    code = stop(proc)
    counts = _counts(setup, work, seed=seed, kills=kills)
    assert code == 0, counts
    assert kills >= 5, counts
    work.check(setup.app, counts)
    _assert_clean(setup, counts)


@pytest.fixture
def private_broker(tmp_path_factory):
    """A RabbitMQ node of this test's own (so restarting it disturbs nobody else)."""
    if shutil.which("rabbitmq-server") is None:
        missing("a private RabbitMQ node", "rabbitmq-server is not installed")
    broker = PrivateBroker(tmp_path_factory.mktemp("broker"))
    try:
        broker.start()
    except RuntimeError as exc:
        missing("a private RabbitMQ node", str(exc))
    yield broker
    broker.stop()


@pytest.mark.slow
def test_broker_restart_mid_run_reconnects_and_loses_nothing(private_broker, mongo_store_uri,
                                                             tmp_path):
    setup = QueueSetup(private_broker.url, mongo_store_uri, tmp_path)
    try:
        work = Workload.build(make_jobs(setup.app, 20, "restart"), 40)
        work.publish(setup)
        proc = setup.start_consumer()
        queue = setup.names["queue"]
        wait_until(lambda: queue_depth(setup.amqp_url, queue) <= work.sent - 300, 120,
                   "some progress before the restart")
        private_broker.stop()
        private_broker.start()
        _finish(setup, work)
        code = stop(proc)
        logs = setup.logs()
        counts = _counts(setup, work, connects=logs.count("INFO reactor.transport connected"))
        assert code == 0, counts
        assert "reconnecting in" in logs and logs.count("transport connected to") >= 2, counts
        work.check(setup.app, counts)
        _assert_clean(setup, counts)
    finally:
        setup.close()


@pytest.mark.slow
def test_store_outage_pauses_consuming_and_resumes_without_loss(amqp_url, tmp_path):
    ferret = start_private_ferretdb(tmp_path / "ferretdb")
    setup = QueueSetup(amqp_url, ferret.uri, tmp_path,
                       overrides={"server_selection_timeout_ms": 500})
    try:
        work = Workload.build(make_jobs(setup.app, 10, "outage"), 40)
        work.publish(setup)
        health = tmp_path / "health.json"
        proc = setup.start_consumer("--health-file", str(health), "--health-interval", "0.2")
        queue = setup.names["queue"]
        wait_until(lambda: queue_depth(setup.amqp_url, queue) <= work.sent - 150, 120,
                   "some progress before the outage")
        ferret.stop()
        stopped = time.monotonic()

        def status():
            try:
                return json.loads(health.read_text())["status"]
            except (OSError, ValueError):
                return None
        wait_until(lambda: status() == "paused", 60, "the consumer to pause")
        held = queue_depth(setup.amqp_url, queue)
        time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))  # the outage lasts 10 s
        assert proc.poll() is None, "the consumer must ride out a store outage"
        ferret.start()
        wait_until(lambda: status() == "consuming", 60, "the consumer to resume")
        _finish(setup, work)
        code = stop(proc)
        logs = setup.logs()
        counts = _counts(setup, work, ready_during_outage=held)
        assert code == 0, counts
        assert "paused consuming" in logs and "resuming" in logs, counts
        work.check(setup.app, counts)
        _assert_clean(setup, counts)
    finally:
        setup.close()
        ferret.stop()


def test_sigterm_drains_cleanly_and_nothing_is_lost_or_duplicated(setup):
    work = Workload.build(make_jobs(setup.app, 20, "term"), 30)
    work.publish(setup)
    proc = setup.start_consumer()
    queue = setup.names["queue"]
    wait_until(lambda: queue_depth(setup.amqp_url, queue) <= work.sent - 250, 120,
               "some progress before SIGTERM")
    code = stop(proc)
    applied, ready = work.applied(setup.app), total_depth(setup.amqp_url, setup.queue_names())
    counts = f"sent={work.sent} applied={applied} back_in_queue={ready}"
    assert code == 0, counts
    assert "received SIGTERM" in setup.logs(), counts
    # In-flight work was finished and acked; the rest went back: each event in exactly one place.
    assert applied + ready == work.sent and ready > 0, counts
    proc = setup.start_consumer()
    _finish(setup, work)
    assert stop(proc) == 0
    counts = _counts(setup, work)
    assert count_lines(setup.logs(), "duplicate:") == 0, counts
    work.check(setup.app, counts)
    _assert_clean(setup, counts)


def test_partitioned_consumers_keep_per_job_order_as_consumers_are_added(setup):
    setup.partitions = 4
    work = Workload.build(make_jobs(setup.app, 24, "parts"), 25)
    work.publish(setup)
    a = setup.start_consumer("--partitions", "4", "--member", "0/1", name="a")
    wait_until(lambda: _main_depth(setup) <= work.sent - 200, 120, "consumer A under way")
    # Scale out from one consumer to three: B and C subscribe first (standby: single active
    # consumer), then A restarts with its smaller share; B and C take over where A left off.
    b = setup.start_consumer("--partitions", "4", "--member", "1/3", name="b")
    c = setup.start_consumer("--partitions", "4", "--member", "2/3", name="c")
    wait_until(lambda: "consuming from" in setup.logs("b") and "consuming from" in
               setup.logs("c"), 60, "B and C subscribed")
    assert stop(a) == 0
    a = setup.start_consumer("--partitions", "4", "--member", "0/3", name="a")
    _finish(setup, work)
    codes = [stop(p) for p in (a, b, c)]
    logs = {n: setup.logs(n) for n in "abc"}
    applied = {n: count_lines(t, "applied:") for n, t in logs.items()}
    retried = sum(t.count("retrying after") for t in logs.values())
    counts = (f"sent={work.sent} applied_by={applied} delayed_retries={retried} "
              f"dead_lettered={queue_depth(setup.amqp_url, setup.names['dead_letter_queue'])}")
    assert codes == [0, 0, 0], counts
    assert sum(applied.values()) == work.sent, counts
    assert applied["b"] + applied["c"] > 0, f"B and C never took over: {counts}"
    assert retried == 0, f"an event arrived out of order: {counts}"
    work.check(setup.app, counts, ordered=True)
    _assert_clean(setup, counts)


def test_three_competing_consumers_lose_no_update(setup):
    setup.overrides.update(prefetch=5)
    # Updates are allowed from CREATED in any order, so three consumers race on four jobs and
    # every race is settled by the compare-and-set.
    work = Workload.build(make_jobs(setup.app, 4, "cas"), 150, names=["update"] * 150)
    work.publish(setup)
    procs = [setup.start_consumer(name=f"w{i}") for i in range(3)]
    _finish(setup, work)
    codes = [stop(p) for p in procs]
    applied = {f"w{i}": count_lines(setup.logs(f"w{i}"), "applied:") for i in range(3)}
    counts = f"sent={work.sent} applied_by={applied}"
    assert codes == [0, 0, 0], counts
    assert sum(applied.values()) == work.sent, counts
    assert sum(1 for v in applied.values() if v) >= 2, f"no competition happened: {counts}"
    work.check(setup.app, counts, ordered=False)
    _assert_clean(setup, counts)
