"""The consumer under faults, as a real ``reactor consume`` subprocess: kill -9, broker restart,
store outage, store crash (SecantusDB killed with SIGKILL), SIGTERM, several consumers. Every
test states its counts when it fails.

No test depends on how fast the consumer drains: a fault is made to meet work by publishing
part of the workload while the consumer is frozen (SIGSTOP) or the store is down, never by
hoping the consumer is still busy when the fault arrives. The consumer runs its pipeline in a
child process (the default), which a test kills too. The key tests run with one commit per
message (``batch_size: 1``) and with group commit (``batch_size: 50``, the default).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from conftest import missing
from queue_helpers import (PrivateBroker, QueueSetup, Workload, count_lines, freeze, make_jobs,
                           queue_depth, start_private_secantus, stop, thaw, total_depth,
                           wait_subscribed, wait_until, while_running)
from reactor.contract.messages import duplicate_key

pytestmark = [pytest.mark.rabbitmq, pytest.mark.mongo]

# One commit per message, and group commit (the default batch size).
BATCH_SIZES = pytest.mark.parametrize("batch_size", [1, 50], ids=["one-by-one", "group-commit"])


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


def _finish(setup: QueueSetup, work: Workload, *procs, timeout_s: float = 300) -> None:
    """Wait until the queues are empty and every event is in the store (while ``procs`` run)."""
    wait_until(while_running(lambda: _main_depth(setup) == 0, *procs), timeout_s,
               "the main queue to drain")
    wait_until(while_running(lambda: work.applied(setup.app) == work.sent, *procs), timeout_s,
               f"all {work.sent} events applied", interval_s=1.0)


def _status(health: Path) -> str | None:
    """The consumer's status from its health file (None while there is none)."""
    try:
        return json.loads(health.read_text())["status"]
    except (OSError, ValueError):
        return None


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
    # Seven parts of the 50 steps. The consumer drains to a random point of its backlog, is
    # frozen there, the next part is published, and only then is it killed: each kill meets
    # ready and unacknowledged messages (and possibly a commit not yet acked), however fast the
    # consumer is. Parts are published in step order, so every job's events stay in order.
    bounds = [0, 8, 15, 22, 29, 36, 43, 50]
    parts = [work.steps(a, b) for a, b in zip(bounds, bounds[1:])]
    parts[0].publish(setup)
    queue = setup.names["queue"]
    ready_at_kills: list[int] = []
    proc = setup.start_consumer()
    for part in parts[1:]:
        threshold = rng.randrange(max(1, queue_depth(setup.amqp_url, queue)))
        wait_until(while_running(lambda: queue_depth(setup.amqp_url, queue) <= threshold,
                                 proc), 300,
                   f"progress below {threshold} ready messages (kill {len(ready_at_kills) + 1})")
        time.sleep(rng.uniform(0, 0.4))
        freeze(proc)
        part.publish(setup)
        ready_at_kills.append(queue_depth(setup.amqp_url, queue))
        proc.kill()  # SIGKILL: no drain, no goodbye; unacked deliveries return to the queue
        proc.wait()
        proc = setup.start_consumer()
    _finish(setup, work, proc)
    code = stop(proc)
    counts = _counts(setup, work, seed=seed, kills=len(ready_at_kills),
                     ready_at_kills=ready_at_kills)
    assert code == 0, counts
    assert len(ready_at_kills) == 6 and min(ready_at_kills) > 0, counts
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
@BATCH_SIZES
def test_broker_restart_mid_run_reconnects_and_loses_nothing(private_broker, mongo_store_uri,
                                                             tmp_path, batch_size):
    setup = QueueSetup(private_broker.url, mongo_store_uri, tmp_path,
                       overrides={"batch_size": batch_size})
    try:
        work = Workload.build(make_jobs(setup.app, 20, "restart"), 40)
        first, second = work.steps(0, 20), work.steps(20, 40)
        first.publish(setup)
        proc = setup.start_consumer()
        queue = setup.names["queue"]
        wait_until(while_running(lambda: queue_depth(setup.amqp_url, queue) <= first.sent - 150,
                                 proc), 120, "some progress before the restart")
        # Frozen, the consumer keeps the deliveries it holds while the rest of the workload is
        # queued and the broker goes down: the restart is sure to meet messages in flight.
        freeze(proc)
        second.publish(setup)
        ready = queue_depth(setup.amqp_url, queue)
        private_broker.stop()
        thaw(proc)  # it finds its connection gone and retries while the broker is down
        wait_until(lambda: "reconnecting in" in setup.logs(), 60,
                   "the consumer to notice the broker is gone")
        private_broker.start()
        _finish(setup, work, proc)
        code = stop(proc)
        logs = setup.logs()
        counts = _counts(setup, work, ready_at_restart=ready,
                         connects=logs.count("transport connected to"))
        assert code == 0, counts
        assert ready > 0, counts
        assert "reconnecting in" in logs and logs.count("transport connected to") >= 2, counts
        work.check(setup.app, counts)
        _assert_clean(setup, counts)
    finally:
        setup.close()


@pytest.mark.slow
@BATCH_SIZES
def test_store_outage_pauses_consuming_and_resumes_without_loss(amqp_url, tmp_path,
                                                                batch_size):
    server = start_private_secantus(tmp_path / "secantusdb")
    setup = QueueSetup(amqp_url, server.uri, tmp_path,
                       overrides={"server_selection_timeout_ms": 500, "batch_size": batch_size})
    try:
        work = Workload.build(make_jobs(setup.app, 10, "outage"), 40)
        first, second = work.steps(0, 20), work.steps(20, 40)
        first.publish(setup)
        health = tmp_path / "health.json"
        proc = setup.start_consumer("--health-file", str(health), "--health-interval", "0.2")
        queue = setup.names["queue"]
        wait_until(while_running(lambda: first.applied(setup.app) == first.sent, proc), 120,
                   "the first half applied before the outage")
        # The rest arrives during the outage, so the outage meets work however fast the first
        # half went.
        server.stop()
        stopped = time.monotonic()
        second.publish(setup)
        wait_until(while_running(lambda: _status(health) == "paused", proc), 60,
                   "the consumer to pause")
        # Paused: it took some deliveries (held, unacked) and stopped taking more.
        held = queue_depth(setup.amqp_url, queue)
        forwarded = total_depth(setup.amqp_url, [setup.names["dead_letter_queue"],
                                                 setup.names["retry_queue"]])
        time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))  # the outage lasts 10 s
        assert proc.poll() is None, "the consumer must ride out a store outage"
        outage = f"sent={work.sent} second_half={second.sent} ready_while_paused={held} " \
                 f"dead_or_retried_while_paused={forwarded}"
        assert 0 < held < second.sent, outage
        assert forwarded == 0, f"nothing may be given up while the store is down: {outage}"
        server.start()
        wait_until(while_running(lambda: _status(health) == "consuming", proc), 60,
                   "the consumer to resume")
        _finish(setup, work, proc)
        code = stop(proc)
        logs = setup.logs()
        counts = _counts(setup, work, ready_while_paused=held)
        assert code == 0, counts
        assert "paused consuming" in logs and "resuming" in logs, counts
        work.check(setup.app, counts)
        _assert_clean(setup, counts)
    finally:
        setup.close()
        server.stop()


def _history_keys(setup: QueueSetup, work: Workload) -> tuple[int, int]:
    """(sent events missing from their job's history, history keys present more than once)."""
    sent: dict[str, set[str]] = {u: set() for u, _ in work.jobs}
    for m in work.messages:
        sent[m.routing_key].add(duplicate_key(m.body, m.message_id))
    missing_keys = repeated = 0
    for uuid, keys in sent.items():
        stored = [h.get("key") for h in setup.app.store.get_job(uuid)["history"][1:]]
        missing_keys += len(keys - set(stored))
        repeated += len(stored) - len(set(stored))
    return missing_keys, repeated


@pytest.mark.slow
@BATCH_SIZES
def test_store_killed_mid_run_loses_no_acked_event_and_applies_none_twice(amqp_url, tmp_path,
                                                                          batch_size):
    seed = random.randrange(1 << 30)
    server = start_private_secantus(tmp_path / "secantusdb", "crash")
    setup = QueueSetup(amqp_url, server.uri, tmp_path,
                       overrides={"server_selection_timeout_ms": 500, "batch_size": batch_size})
    try:
        work = Workload.build(make_jobs(setup.app, 40, "storecrash"), 50)
        assert work.sent == 2000
        first, second = work.steps(0, 25), work.steps(25, 50)
        first.publish(setup)
        health = tmp_path / "health.json"
        proc = setup.start_consumer("--health-file", str(health), "--health-interval", "0.2")
        # SIGKILL the store while the consumer works through the first half (at a random point
        # of it, so commits are in flight), then queue the second half: the crash meets work
        # however fast the first half went.
        progress = random.Random(seed).randrange(100, first.sent - 100)
        wait_until(while_running(lambda: first.applied(setup.app) >= progress, proc), 300,
                   f"{progress} events applied before the crash")
        server.kill()
        second.publish(setup)
        wait_until(while_running(lambda: _status(health) == "paused", proc), 60,
                   "the consumer to pause while the store is down")
        server.start()  # same port, same data directory: WiredTiger recovers from its log
        _finish(setup, work, proc)
        alive = proc.poll() is None
        code = stop(proc)
        # Every message ends acked (the queues are empty, checked below) and an acked message
        # never comes back, so a key missing from its job's history is an acked event the
        # crash lost.
        missing_keys, repeated = _history_keys(setup, work)
        counts = _counts(setup, work, seed=seed, killed_after=progress, lost=missing_keys,
                         duplicate_keys=repeated)
        assert alive and code == 0, f"the consumer must ride out a store crash: {counts}"
        assert "paused consuming" in setup.logs(), counts
        assert missing_keys == 0, f"acknowledged events lost in the crash: {counts}"
        assert repeated == 0, f"events applied twice: {counts}"
        work.check(setup.app, counts)  # revision = 1 + events, every job in its final state
        _assert_clean(setup, counts)
    finally:
        setup.close()
        server.stop()


def _frozen_mid_run(setup: QueueSetup, label: str, progress: int):
    """A consumer frozen once it has taken ``progress`` deliveries of the first half of a
    workload (20 jobs × 30 events): the workload, its second half (not yet published) and the
    consumer."""
    work = Workload.build(make_jobs(setup.app, 20, label), 30)
    first, second = work.steps(0, 15), work.steps(15, 30)
    first.publish(setup)
    proc = setup.start_consumer()
    queue = setup.names["queue"]
    wait_until(while_running(lambda: queue_depth(setup.amqp_url, queue) <= first.sent - progress,
                             proc), 120, f"{progress} deliveries taken")
    freeze(proc)
    return work, second, proc


@BATCH_SIZES
def test_sigterm_drains_cleanly_and_nothing_is_lost_or_duplicated(setup, batch_size):
    setup.overrides["batch_size"] = batch_size
    # SIGTERM reaches a frozen consumer that holds deliveries with more queued behind them:
    # what it was doing at the freeze it finishes and acks, the rest must go back.
    work, second, proc = _frozen_mid_run(setup, "term", 150)
    second.publish(setup)
    code = stop(proc)
    applied, ready = work.applied(setup.app), total_depth(setup.amqp_url, setup.queue_names())
    counts = f"sent={work.sent} applied={applied} back_in_queue={ready}"
    assert code == 0, counts
    assert "received SIGTERM" in setup.logs(), counts
    # In-flight work was finished and acked; the rest went back: each event in exactly one place.
    assert applied + ready == work.sent and ready > 0, counts
    proc = setup.start_consumer()
    _finish(setup, work, proc)
    assert stop(proc) == 0
    counts = _counts(setup, work)
    assert count_lines(setup.logs(), "duplicate:") == 0, counts
    work.check(setup.app, counts)
    _assert_clean(setup, counts)


@BATCH_SIZES
def test_partitioned_consumers_keep_per_job_order_as_consumers_are_added(setup, batch_size):
    setup.partitions = 4
    setup.overrides["batch_size"] = batch_size
    work = Workload.build(make_jobs(setup.app, 24, "parts"), 25)
    first, second = work.steps(0, 12), work.steps(12, 25)
    first.publish(setup)
    a = setup.start_consumer("--partitions", "4", "--member", "0/1", name="a")
    wait_until(while_running(lambda: work.applied(setup.app) > 0, a), 120,
               "consumer A under way", interval_s=0.5)
    # Scale out from one consumer to three: B and C subscribe first (standby: single active
    # consumer), then A restarts with its smaller share; B and C take over where A left off.
    b = setup.start_consumer("--partitions", "4", "--member", "1/3", name="b")
    c = setup.start_consumer("--partitions", "4", "--member", "2/3", name="c")
    wait_subscribed(setup, "b")
    wait_subscribed(setup, "c")
    # A is frozen while the rest is published, so B's and C's partitions still hold work when
    # A hands them over, however fast A was.
    freeze(a)
    second.publish(setup)
    assert stop(a) == 0
    a = setup.start_consumer("--partitions", "4", "--member", "0/3", name="a")
    _finish(setup, work, a, b, c)
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


@BATCH_SIZES
def test_three_competing_consumers_lose_no_update(setup, batch_size):
    setup.overrides.update(prefetch=5, batch_size=batch_size)
    # Updates are allowed from CREATED in any order, so three consumers race on four jobs and
    # every race is settled by the compare-and-set.
    work = Workload.build(make_jobs(setup.app, 4, "cas"), 150, names=["update"] * 150)
    procs = [setup.start_consumer(name=f"w{i}") for i in range(3)]
    for i in range(3):
        wait_subscribed(setup, f"w{i}")
    # Published only once all three subscribed: the broker deals the messages out among them,
    # so they compete however fast each one is.
    work.publish(setup)
    _finish(setup, work, *procs)
    codes = [stop(p) for p in procs]
    applied = {f"w{i}": count_lines(setup.logs(f"w{i}"), "applied:") for i in range(3)}
    counts = f"sent={work.sent} applied_by={applied}"
    assert codes == [0, 0, 0], counts
    assert sum(applied.values()) == work.sent, counts
    assert sum(1 for v in applied.values() if v) >= 2, f"no competition happened: {counts}"
    work.check(setup.app, counts, ordered=False)
    _assert_clean(setup, counts)


def _pipeline_process(proc) -> int:
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1, f"the consumer should have one pipeline process: {children}"
    return int(children[0])


@BATCH_SIZES
def test_pipeline_process_killed_mid_run_stops_the_consumer_and_loses_nothing(setup,
                                                                               batch_size):
    setup.overrides["batch_size"] = batch_size
    # Frozen, the consumer holds deliveries (some perhaps sent to the child, some committed
    # and not yet acked) while its pipeline process is killed and more work arrives.
    work, second, proc = _frozen_mid_run(setup, "child", 100)
    os.kill(_pipeline_process(proc), signal.SIGKILL)
    second.publish(setup)
    thaw(proc)
    wait_until(lambda: proc.poll() is not None, 60, "the consumer to stop")
    logs = setup.logs()
    assert proc.returncode == 1, logs
    assert "was killed by SIGKILL: stopping; unsettled deliveries return to the queue" in logs
    proc = setup.start_consumer()
    _finish(setup, work, proc)
    assert stop(proc) == 0
    counts = _counts(setup, work)
    work.check(setup.app, counts)
    _assert_clean(setup, counts)


def test_pipeline_process_killed_while_idle_stops_the_consumer(setup):
    proc = setup.start_consumer()
    wait_subscribed(setup)
    os.kill(_pipeline_process(proc), signal.SIGKILL)
    # No delivery arrives to find it out: the consumer's own check does, within seconds.
    wait_until(lambda: proc.poll() is not None, 30, "the consumer to stop")
    assert proc.returncode == 1, setup.logs()
    assert setup.logs().count("was killed by SIGKILL") == 1, setup.logs()
