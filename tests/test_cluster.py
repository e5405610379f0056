"""Losing a RabbitMQ node mid-run, on the 3-node cluster of ``scripts/services.sh start
rabbitmq-cluster`` with quorum queues and a consumer given the three URLs.

The consumer starts first, so it declares the topology and the quorum queues' leaders are
placed on the node it is connected to (RabbitMQ's default, client-local): killing the leader
then takes the consumer's connection down too, so one kill exercises both the leader election
and the consumer's reconnection to another node. The kill is made to meet work: the consumer is
frozen (SIGSTOP) while holding deliveries, more events are queued, and only then is the leader
killed (SIGKILL) and the consumer thawed. ``reactor publish`` runs during the outage, and the
node is started again with the same script, so it rejoins.

5,000 events over 100 jobs per test: publishing them with a confirm each takes about 25 s on
quorum queues on this two-core machine, the rest of a test (failover, restart, drain) well under
a minute. The store is SQLite, so the test depends on the broker only. Failover time = from the
kill until the consumer applied an event it was delivered after the kill; every assertion
message states it with the counts.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest

from cluster_helpers import ClusterNodes, consumer_pids, freeze_pids, thaw_pids
from queue_helpers import (QueueSetup, Workload, count_lines, make_jobs, queue_depth, stop,
                           total_depth, wait_subscribed, wait_until, while_running)
from reactor.broker.publisher import PublishReport, publish
from reactor.broker.endpoints import Endpoints

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

JOBS, STEPS = 100, 50  # 5,000 events
# Steps published before the kill (consumer running), while it is frozen, and during the outage.
BOUNDS = (0, 20, 35, 50)
PREFETCH = 100  # the default: a consumer never holds more unacked deliveries than this


@pytest.fixture
def nodes(amqp_cluster):
    """The cluster's nodes; whatever a test killed is started again afterwards."""
    cluster = ClusterNodes(amqp_cluster)
    yield cluster
    if cluster.killed:
        cluster.start()


@pytest.fixture
def setup(nodes, sqlite_uri, tmp_path):
    """Quorum queues, every node's URL for the reactor; inspection goes through one node."""
    s = QueueSetup(nodes.urls[0], sqlite_uri, tmp_path,
                   overrides={"broker_url": nodes.broker_url, "queue_type": "quorum"})
    yield s
    s.amqp_url = nodes.url_of(nodes.survivor())
    s.close()


def _publish(nodes: ClusterNodes, setup: QueueSetup, part: Workload) -> None:
    report = publish(nodes.broker_url, setup.topology, part.messages)
    assert report.ok, f"publishing {part.sent} events: {report.failed[:3]}"


def _publish_command(setup: QueueSetup, part: Workload) -> subprocess.Popen:
    """``reactor publish`` of ``part`` as JSON lines, with the environment of the setup."""
    path = setup.workdir / f"outage-{len(list(setup.workdir.glob('outage-*')))}.jsonl"
    path.write_bytes(b"\n".join(m.body for m in part.messages) + b"\n")
    args = ["--partitions", str(setup.partitions)] if setup.partitions else []
    return subprocess.Popen([sys.executable, "-m", "reactor.cli.main", "publish", *args, str(path)],
                            cwd=setup.workdir, env=setup.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


class _InOrder:
    """Stands in for the shuffle of ``Endpoints``: the URLs are tried in the order given."""

    @staticmethod
    def shuffle(items: list) -> None:
        """Leave ``items`` as they are."""


class _PausedPublisher(threading.Thread):
    """``publish`` of a part in a thread, connected to ``first`` (the node about to be killed):
    it stops halfway (between two confirmed messages) until ``resume``, so the node is sure to
    die under a publisher that still has messages to send."""

    def __init__(self, nodes: ClusterNodes, setup: QueueSetup, part: Workload, first: str):
        super().__init__(daemon=True)
        urls = [nodes.url_of(first)] + [u for u in nodes.urls if u != nodes.url_of(first)]
        self.endpoints = Endpoints(",".join(urls), "cluster test", rng=_InOrder())
        self.topology = setup.topology
        self.part = part
        self.halfway = threading.Event()
        self._resume = threading.Event()
        self.report: PublishReport | None = None

    def _messages(self):
        for n, message in enumerate(self.part.messages):
            if n == len(self.part.messages) // 2:
                self.halfway.set()
                self._resume.wait(300)
            yield message

    def run(self) -> None:
        self.report = publish(self.endpoints, self.topology, self._messages())

    def resume(self) -> None:
        """Send the second half."""
        self._resume.set()


def _connected_nodes(nodes: ClusterNodes, logs: str) -> list[str]:
    """The nodes the consumer connected to, in order, from its log."""
    return [nodes.node_of(line) or "?" for line in logs.splitlines()
            if "reactor.broker.consumer_transport connected to" in line]


def _resubscribe_gaps(logs: str) -> list[float]:
    """Seconds from each lost connection to the next new subscription, by the log's clock."""
    events = []
    for line in logs.splitlines():
        if "reactor.broker.consumer_transport connection to" in line and " lost: " in line:
            kind = "lost"
        elif "reactor.broker.channel consuming from" in line:
            kind = "consuming"
        else:
            continue
        events.append((datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f"), kind))
    gaps, lost = [], []
    for when, kind in sorted(events):
        if kind == "lost":
            lost.append(when)
        elif lost:
            gaps.append(round((when - lost.pop(0)).total_seconds(), 2))
    return gaps


def _lose_the_leader(setup: QueueSetup, nodes: ClusterNodes, label: str, members: int,
                     *consume_args: str) -> None:
    """The scenario of the module docstring; asserts exactly-once, in-order effects."""
    work = Workload.build(make_jobs(setup.app, JOBS, label), STEPS)
    before, queued, during = (work.steps(a, b) for a, b in zip(BOUNDS, BOUNDS[1:]))
    main = setup.topology.main_queues
    proc = setup.start_consumer(*consume_args)
    wait_subscribed(setup, count=members)
    _publish(nodes, setup, before)
    victim = nodes.leader(main[0])
    setup.amqp_url = nodes.url_of(nodes.survivor(victim))  # look at queues through a survivor
    wait_until(while_running(lambda: total_depth(setup.amqp_url, main) <= before.sent - 300,
                             proc), 120, "progress before the kill")
    pids = consumer_pids(proc, members)
    freeze_pids(pids)
    applied_at_freeze = work.applied(setup.app)
    # Half of the next part is queued while the consumer is frozen, by a publisher connected to
    # the victim; the other half it sends after the kill, from another node.
    halves = _PausedPublisher(nodes, setup, queued, victim)
    halves.start()
    assert halves.halfway.wait(300), "the publisher never got halfway"
    ready_at_kill = total_depth(setup.amqp_url, main)
    connected_before = _connected_nodes(nodes, setup.logs())
    nodes.kill(victim)
    killed_at = time.monotonic()
    thaw_pids(pids)
    halves.resume()
    # Beyond what it held at the kill (at most the prefetch window per consumer process), an
    # applied event was delivered after the kill.
    threshold = applied_at_freeze + PREFETCH * members
    wait_until(while_running(lambda: work.applied(setup.app) > threshold, proc), 120,
               "the consumer applying again after the kill", interval_s=0.05)
    failover_s = time.monotonic() - killed_at
    halves.join(300)
    # Only after the whole part before it, so that each job's events stay in order.
    publisher = _publish_command(setup, during)  # started during the outage
    out, err = publisher.communicate(timeout=300)
    published_during = f"rc={publisher.returncode} {out.strip()!r} {err.strip()[-300:]!r}"
    restart_s = nodes.start()
    wait_until(lambda: len(nodes.queue_info(main[0], nodes.survivor())["online"]) == 3, 120,
               f"{victim} back among the online members of {main[0]}")
    wait_until(while_running(lambda: total_depth(setup.amqp_url, main) == 0, proc), 300,
               "the main queues to drain")
    wait_until(while_running(lambda: work.applied(setup.app) == work.sent, proc), 300,
               f"all {work.sent} events applied", interval_s=0.5)
    running = proc.poll() is None
    code = stop(proc)
    logs = setup.logs()
    figures = {
        "sent": work.sent, "applied": work.applied(setup.app),
        "applied_log": count_lines(logs, "applied:"),
        "duplicates": count_lines(logs, "duplicate:"),
        "dead_lettered": queue_depth(setup.amqp_url, setup.names["dead_letter_queue"]),
        "failover_s": round(failover_s, 2), "resubscribed_after_s": _resubscribe_gaps(logs),
        "restart_s": round(restart_s, 1),
        "victim": victim, "connected_before": connected_before,
        "connected_after": _connected_nodes(nodes, logs)[len(connected_before):],
        "ready_at_kill": ready_at_kill, "published_during_outage": published_during,
        "publisher_across_the_kill": halves.report and {
            "confirmed": halves.report.confirmed, "failed": halves.report.failed[:3],
            "reconnects": halves.report.reconnects},
    }
    counts = json.dumps(figures)
    print(f"\ncluster failover ({label}): {counts}")
    assert running, f"the consumer exited during the run: {counts}"
    assert code == 0, counts
    assert ready_at_kill > 0, counts
    assert halves.report is not None and halves.report.ok, counts
    assert halves.report.reconnects and nodes.node_of(halves.report.reconnects[0].split(";")[0]) \
        == victim, f"the publisher should have lost {victim} and gone on elsewhere: {counts}"
    assert publisher.returncode == 0 and f"confirmed {during.sent} of {during.sent}" in out, \
        counts
    assert ":guest@" not in logs + err, "a broker password reached a log line"
    work.check(setup.app, counts)
    assert figures["dead_lettered"] == 0, counts
    assert total_depth(setup.amqp_url, setup.queue_names()) == 0, counts


def test_losing_the_leader_node_loses_and_duplicates_no_event(setup, nodes):
    _lose_the_leader(setup, nodes, "cluster", 1)


def test_partitioned_consumers_keep_order_through_the_loss_of_a_node(setup, nodes):
    setup.partitions = 2
    _lose_the_leader(setup, nodes, "cluster-parts", 2, "--processes", "2", "--partitions", "2")
