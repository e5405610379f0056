"""``reactor consume --processes N``: N members of the partitions under one command, against the
real broker and the embedded store."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from queue_helpers import (QueueSetup, Workload, count_lines, make_jobs, stop, total_depth,
                           wait_until, while_running)
from reactor.consume.supervisor import plan


@pytest.fixture
def setup(amqp_url, sqlite_uri, tmp_path):
    s = QueueSetup(amqp_url, sqlite_uri, tmp_path)
    yield s
    s.close()


def _children(pid: int) -> list[int]:
    """The pids of the direct children of ``pid``."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting to be reaped (by its new parent, once orphaned)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_processes_drain_the_partitions_in_order_and_stop_together(setup, tmp_path):
    setup.partitions = 4
    work = Workload.build(make_jobs(setup.app, 12, "procs"), 20)
    health = tmp_path / "health.json"
    proc = setup.start_consumer("--processes", "2", "--partitions", "4", "--health-file",
                                str(health), "--health-interval", "0.2")
    members = [tmp_path / "health.json.member0", tmp_path / "health.json.member1"]
    doc = wait_until(while_running(lambda: _ready(health), proc), 120, "all members consuming")
    assert doc["pid"] == proc.pid and len(doc["members"]) == 2
    children = sorted(m["pid"] for m in doc["members"])
    assert children == sorted(_children(proc.pid))
    assert all(json.loads(p.read_text())["status"] == "consuming" for p in members)
    work.publish(setup)
    wait_until(while_running(lambda: work.applied(setup.app) == work.sent, proc), 300,
               f"all {work.sent} events applied")
    assert stop(proc) == 0
    assert not any(_alive(pid) for pid in children)
    assert not health.exists() and not any(p.exists() for p in members)
    logs = setup.logs()
    # Both members took part, each on its own partitions, and nothing came out of order.
    assert logs.count("consuming from") == 2, logs[-2000:]
    assert count_lines(logs, "applied:") == work.sent
    assert "retrying after" not in logs
    work.check(setup.app, f"sent={work.sent}", ordered=True)
    assert total_depth(setup.amqp_url, setup.queue_names()) == 0


def _status(path) -> str | None:
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError):
        return None


def _ready(path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if doc.get("status") == "consuming" else None


def _two_members(setup: QueueSetup, health) -> tuple:
    """``consume --processes 2`` on two partitions, once both members consume: (process, the
    supervisor's health document)."""
    setup.partitions = 2
    proc = setup.start_consumer("--processes", "2", "--partitions", "2", "--health-file",
                                str(health), "--health-interval", "0.2")
    doc = wait_until(while_running(lambda: _ready(health), proc), 120, "all members consuming")
    return proc, doc


def test_a_member_that_dies_stops_the_others_and_the_command_fails(setup, tmp_path):
    health = tmp_path / "health.json"
    proc, doc = _two_members(setup, health)
    victim, other = (m["pid"] for m in doc["members"])
    os.kill(victim, signal.SIGSTOP)  # wedged: its health file goes stale, and so does readiness
    stale = wait_until(while_running(lambda: _status(health) == "unresponsive", proc), 60,
                       "the supervisor to report a wedged member")
    assert stale
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=120) == 128 + signal.SIGKILL  # as a shell reports the member
    assert not _alive(other)
    logs = setup.logs()
    assert f"(pid {victim}) exited with code -9; stopping the others" in logs
    assert "received SIGTERM" in logs  # the other member drained and stopped


def test_members_drain_and_stop_when_the_supervisor_is_killed(setup, tmp_path):
    proc, doc = _two_members(setup, tmp_path / "health.json")
    members = [m["pid"] for m in doc["members"]]
    proc.kill()  # SIGKILL: the supervisor cannot forward anything
    proc.wait()
    wait_until(lambda: not any(_alive(pid) for pid in members), 60,
               "the members to stop after their supervisor died")
    assert setup.logs().count("received SIGTERM") == 2


@pytest.mark.parametrize("args, message", [
    (["--processes", "2"], "--processes 2 needs at least 2 partitions (got 0)"),
    (["--processes", "3", "--partitions", "2"], "--processes 3 needs at least 3 partitions"),
    (["--processes", "2", "--partitions", "2", "--member", "1/2"],
     "--processes and --member cannot be combined"),
    (["--processes", "0"], "Invalid value for '--processes'"),
])
def test_a_bad_process_layout_is_refused_before_anything_starts(setup, args, message):
    done = subprocess.run([sys.executable, "-m", "reactor.cli.main", "consume", *args],
                          cwd=setup.workdir, env=setup.env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "consuming from" not in done.stderr and "started" not in done.stderr


def test_each_member_gets_its_own_partitions_health_file_and_metrics_port():
    children = plan(3, 6, grace_s=7.0, health_file="/run/h.json", health_interval_s=2.0,
                    metrics_port=9100, metrics_host="127.0.0.1", root_args=["--config", "c.yml"])
    for index, command in enumerate(children.commands):
        assert command[1:6] == ["-m", "reactor.cli.main", "--config", "c.yml", "consume"]
        text = " ".join(command)
        assert f"--member {index}/3 --partitions 6 --grace 7.0 --health-interval 2.0" in text
        assert f"--health-file /run/h.json.member{index}" in text
        assert f"--metrics-port {9100 + index} --metrics-host 127.0.0.1" in text
    assert [str(h.path) for h in children.health_files] == \
        [f"/run/h.json.member{i}" for i in range(3)]
    free = plan(2, 2, grace_s=1.0, health_file=None, health_interval_s=1.0, metrics_port=0,
                metrics_host="0.0.0.0", root_args=[])
    assert all("--metrics-port 0" in " ".join(c) for c in free.commands)
    assert free.health_files == [None, None]
