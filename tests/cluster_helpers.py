"""Helpers for the cluster tests: the nodes of the 3-node RabbitMQ cluster that
``scripts/services.sh start rabbitmq-cluster`` runs (which node leads a queue, killing one,
starting it again), and looking at queues through a node that is up."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pika

from conftest import SERVICES, AmqpCluster
from queue_helpers import wait_until


class ClusterNodes:
    """The nodes of a cluster by name, each with its AMQP URL; rabbitmqctl does the rest."""

    def __init__(self, cluster: AmqpCluster):
        self.urls = list(cluster.urls)
        self.nodes = list(cluster.nodes)
        self.killed: list[str] = []

    @property
    def broker_url(self) -> str:
        """Every node's URL, comma-separated: the ``broker_url`` the reactor is given."""
        return ",".join(self.urls)

    def url_of(self, node: str) -> str:
        """The AMQP URL of ``node``."""
        return self.urls[self.nodes.index(node)]

    def node_of(self, url_text: str) -> str | None:
        """The node whose host:port appears in ``url_text`` (a log line's masked URL)."""
        for node, url in zip(self.nodes, self.urls):
            if url.rsplit("@", 1)[1].split("/", 1)[0] in url_text:
                return node
        return None

    def ctl(self, node: str, *args: str, timeout_s: float = 120) -> str:
        """``rabbitmqctl -n NODE ARGS``'s output; RuntimeError naming the command if it fails."""
        out = subprocess.run(["rabbitmqctl", "-q", "-n", node, *args], capture_output=True,
                             text=True, timeout=timeout_s)
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {node} {' '.join(args)} exited "
                               f"{out.returncode}: {out.stderr.strip()[-400:]}")
        return out.stdout

    def answering(self, node: str) -> bool:
        """True if ``node`` takes AMQP connections."""
        try:
            pika.BlockingConnection(pika.URLParameters(self.url_of(node))).close()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not answering"
            return False

    def survivor(self, *but: str) -> str:
        """A node other than ``but`` (the ones killed or about to be)."""
        return next(n for n in self.nodes if n not in but and n not in self.killed)

    def queue_info(self, queue: str, via: str) -> dict[str, str | list[str]]:
        """Leader, members and online members of quorum queue ``queue``, as ``via`` sees them."""
        for line in self.ctl(via, "list_queues", "name", "leader", "members",
                             "online").splitlines():
            name, _, rest = line.partition("\t")
            if name == queue:
                leader, members, online = rest.split("\t")
                return {"leader": leader, "members": _node_list(members),
                        "online": _node_list(online)}
        raise AssertionError(f"queue {queue!r} is not listed by {via}")

    def leader(self, queue: str) -> str:
        """The node that leads quorum queue ``queue`` now."""
        return str(self.queue_info(queue, self.survivor())["leader"])

    def pid(self, node: str) -> int:
        """The OS process id of ``node``'s Erlang VM."""
        return int(self.ctl(node, "eval", "list_to_integer(os:getpid()).").strip())

    def kill(self, node: str) -> None:
        """SIGKILL ``node``: no shutdown, its connections and replicas vanish at once."""
        pid = self.pid(node)
        os.kill(pid, signal.SIGKILL)
        self.killed.append(node)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 60, f"{node} (pid {pid}) gone",
                   interval_s=0.05)

    def start(self) -> float:
        """Start whatever node is down with the script (so it rejoins); seconds it took."""
        started = time.monotonic()
        out = subprocess.run(["bash", str(SERVICES), "start", "rabbitmq-cluster"],
                             capture_output=True, text=True, timeout=600,
                             env=os.environ.copy())
        if out.returncode != 0:
            raise RuntimeError(f"services.sh start rabbitmq-cluster exited {out.returncode}: "
                               f"{out.stderr.strip()[-600:]}")
        self.killed.clear()
        return time.monotonic() - started


def _node_list(text: str) -> list[str]:
    # rabbitmqctl prints lists as "[rc1@vm, rc2@vm]".
    return [n.strip() for n in text.strip().strip("[]").split(",") if n.strip()]


# --------------------------------------------------------------------------------- processes
def consumer_pids(proc: subprocess.Popen, members: int) -> list[int]:
    """The consumer processes of ``reactor consume``: itself, or (``members`` > 1, i.e.
    ``--processes``) the member processes its supervisor started."""
    if members == 1:
        return [proc.pid]

    def children():
        path = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        found = [int(p) for p in path.read_text().split()] if path.exists() else []
        return found if len(found) == members else None
    return wait_until(children, 60, f"{members} consumer processes started")


def freeze_pids(pids: list[int]) -> None:
    """SIGSTOP each process and wait until the kernel reports it stopped: it keeps its
    connection and the deliveries it holds, and does nothing."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        wait_until(lambda: _state(pid) in ("T", None), 30, f"process {pid} to stop",
                   interval_s=0.01)


def thaw_pids(pids: list[int]) -> None:
    """SIGCONT each process."""
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return None  # gone
