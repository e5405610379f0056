"""Helpers for the queue tests: unique topology names, consumer subprocesses, broker inspection,
workloads with their in-order oracle, and private servers for fault injection."""
from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid as _uuid
from dataclasses import dataclass, field
from pathlib import Path

import pika

from conftest import ROOT, SERVICES, missing

from reactor.domain import lifecycle
from reactor.app import App
from reactor.domain.identifiers import pipeline_uuid
from reactor.broker.publisher import OutgoingMessage, publish
from reactor.broker.consumer_transport import ConsumerTransport
from reactor.broker.topology import Topology

SECRET = "queue-test-secret-" + "y" * 20  # test-only secret, never a deployment value


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.2):
    """Poll until ``condition()`` is truthy; fail naming ``what`` (a hang guard, not a timing
    assertion: the deadline is far beyond normal runs)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s:.0f}s waiting for: {what}")
        time.sleep(interval_s)


def while_running(condition, *procs: subprocess.Popen):
    """``condition`` for ``wait_until`` that fails at once, with the log's tail, as soon as one
    of the consumers ``procs`` has exited (instead of waiting out the deadline)."""
    def check():
        for proc in procs:
            if proc.poll() is not None:
                log = getattr(proc, "log_path", None)
                tail = Path(log).read_text(errors="replace")[-3000:] if log else ""
                raise AssertionError(f"consumer {proc.pid} exited with code {proc.returncode} "
                                     f"while the test waited; its log ends:\n{tail}")
        return condition()
    return check


# --------------------------------------------------------------------------------- setup
@dataclass
class QueueSetup:
    """Unique exchange/queue names, a store and a broker: the environment of one test."""

    amqp_url: str
    store_uri: str
    workdir: Path
    overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        tag = "t" + _uuid.uuid4().hex[:10]
        self.tag = tag
        self.names = {"exchange": f"{tag}.x", "queue": f"{tag}.q",
                      "dead_letter_queue": f"{tag}.dead", "retry_queue": f"{tag}.retry"}
        self.partitions = 0
        self.procs: list[subprocess.Popen] = []
        self._app: App | None = None

    def env(self, **extra) -> dict:
        """The environment of a ``reactor`` subprocess for this setup."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("REACTOR_")}
        values = {"store_uri": self.store_uri, "broker_url": self.amqp_url, "secret": SECRET,
                  "retry_delay_ms": 300, "log_level": "INFO",
                  # count_lines() reads the console format; JSON logs have their own tests
                  "log_format": "console", "server_selection_timeout_ms": 1500,
                  **self.names, **self.overrides, **extra}
        for key, value in values.items():
            env["REACTOR_" + key.upper()] = str(value)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    @property
    def app(self) -> App:
        """An in-process App on the same store and secret as the subprocesses."""
        if self._app is None:
            env = {k: v for k, v in self.env().items() if k.startswith("REACTOR_")}
            self._app = App.from_env(env)
        return self._app

    @property
    def topology(self) -> Topology:
        return Topology.from_settings(self.app.settings, self.partitions)

    def queue_names(self) -> list[str]:
        t = self.topology
        return t.main_queues + [t.retry_queue_for(q) for q in t.main_queues] + \
            [t.dead_letter_queue]

    # --- consumers ---------------------------------------------------------------------------
    def start_consumer(self, *args: str, name: str = "consumer", env: dict | None = None
                       ) -> subprocess.Popen:
        """``reactor consume ARGS`` as a subprocess; stderr goes to ``<workdir>/<name>.N.log``."""
        n = sum(1 for _ in self.workdir.glob(f"{name}.*.log"))
        log = open(self.workdir / f"{name}.{n}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "reactor.cli.main", "consume", *args],
                                cwd=self.workdir, env=env or self.env(), stdout=log, stderr=log)
        log.close()
        proc.log_path = self.workdir / f"{name}.{n}.log"  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def logs(self, name: str = "consumer") -> str:
        """Every log of consumers called ``name`` so far, concatenated."""
        return "".join(p.read_text(errors="replace")
                       for p in sorted(self.workdir.glob(f"{name}.*.log")))

    def close(self) -> None:
        """Kill leftover consumers, delete the topology, close the store."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        try:
            delete_topology(self.amqp_url, self.queue_names(),
                            [self.names["exchange"], self.names["exchange"] + ".hash"])
        except Exception:  # noqa: BLE001 - the broker may be gone (fault tests); best effort
            pass
        if self._app is not None:
            self._app.close()


def connection_factory(url: str, topology: Topology):
    """What an in-process ``Consumer`` connects with: the RabbitMQ transport, as ``reactor
    consume`` builds it."""
    def connect(queues: list[str], prefetch: int, on_delivery) -> ConsumerTransport:
        return ConsumerTransport(url, topology, queues, prefetch, on_delivery)
    return connect


def stop(proc: subprocess.Popen, timeout_s: float = 60) -> int:
    """SIGTERM a consumer and return its exit code (a frozen one is thawed to receive it)."""
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)  # a no-op unless ``freeze`` stopped it
    return proc.wait(timeout=timeout_s)


def freeze(proc: subprocess.Popen) -> None:
    """SIGSTOP a consumer: it keeps its connection and the deliveries it holds, and does nothing.

    Fault tests freeze a consumer, publish more work, and only then inject the fault (kill,
    SIGTERM, broker restart): the fault is then sure to meet ready and unacknowledged messages
    however fast the consumer drains, and the fault's moment is still the consumer's own.
    """
    assert proc.poll() is None, f"consumer {proc.pid} exited (code {proc.returncode}) before " \
        "it could be frozen"
    proc.send_signal(signal.SIGSTOP)
    # SIGSTOP is asynchronous: wait until the kernel reports the process stopped ("T").
    wait_until(lambda: _proc_state(proc.pid) == "T", 30, f"consumer {proc.pid} to stop",
               interval_s=0.01)


def thaw(proc: subprocess.Popen) -> None:
    """SIGCONT a frozen consumer."""
    proc.send_signal(signal.SIGCONT)


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None  # gone
    return stat.rpartition(")")[2].split()[0]


def wait_subscribed(setup: "QueueSetup", name: str = "consumer", count: int = 1,
                    timeout_s: float = 60) -> None:
    """Wait until the consumers called ``name`` have logged ``count`` subscriptions in all."""
    wait_until(lambda: setup.logs(name).count("consuming from") >= count, timeout_s,
               f"consumer {name!r} to subscribe")


# --------------------------------------------------------------------------------- broker
def _connection(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def queue_depth(url: str, queue: str) -> int:
    """Ready messages in ``queue`` (unacked ones are not counted while a consumer holds them)."""
    conn = _connection(url)
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def total_depth(url: str, queues: list[str]) -> int:
    conn = _connection(url)
    try:
        ch = conn.channel()
        return sum(ch.queue_declare(q, passive=True).method.message_count for q in queues)
    finally:
        conn.close()


@dataclass(frozen=True)
class Got:
    """A message fetched from a queue."""

    body: bytes
    headers: dict
    properties: pika.BasicProperties
    routing_key: str


def drain(url: str, queue: str) -> list[Got]:
    """Fetch and ack every message now in ``queue``."""
    conn = _connection(url)
    out = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(queue)
            if method is None:
                return out
            out.append(Got(body, dict(props.headers or {}), props, method.routing_key))
            ch.basic_ack(method.delivery_tag)
    finally:
        conn.close()


def delete_topology(url: str, queues: list[str], exchanges: list[str]) -> None:
    conn = _connection(url)
    try:
        ch = conn.channel()
        for q in queues:
            ch.queue_delete(q)
        for x in exchanges:
            ch.exchange_delete(x)
    finally:
        conn.close()


# --------------------------------------------------------------------------------- workloads
def make_jobs(app: App, count: int, label: str = "q") -> list[tuple[str, str]]:
    """Register a pipeline and create ``count`` jobs; (uuid, token) each."""
    p = pipeline_uuid(f"queue-tests-{label}")
    app.store.add_pipeline({"uuid": p, "name": f"queue-tests-{label}"})
    out = []
    for i in range(count):
        record, _ = app.jobs.create(p, data={"label": label, "n": i, "r": _uuid.uuid4().hex})
        out.append((record["uuid"], app.authority.job_token(record["uuid"])))
    return out


def event(uuid: str, name: str, token: str | None, data: dict | None = None) -> bytes:
    """An event message body."""
    doc = {"uuid": uuid, "name": name}
    if token is not None:
        doc["token"] = token
    if data is not None:
        doc["data"] = data
    return json.dumps(doc, separators=(",", ":")).encode()


def sequence(length: int) -> list[str]:
    """A valid event sequence of ``length`` events from CREATED, where order matters: updates
    are allowed only while RUNNING, and the tail moves the job on to VALIDATING."""
    tail = ["finish", "index", "indexed", "validate"]
    if length < len(tail) + 1:
        raise ValueError("sequence too short")
    return ["run"] + ["update"] * (length - len(tail) - 1) + tail


@dataclass
class Workload:
    """Events for several jobs, interleaved job by job, with the expected in-order result."""

    jobs: list[tuple[str, str]]
    per_job: dict[str, list[tuple[str, dict]]]
    messages: list[OutgoingMessage]

    @classmethod
    def build(cls, jobs: list[tuple[str, str]], length: int,
              names: list[str] | None = None) -> "Workload":
        names = names or sequence(length)
        per_job: dict[str, list[tuple[str, dict]]] = {u: [] for u, _ in jobs}
        messages = []
        run = _uuid.uuid4().hex[:8]
        for step, name in enumerate(names):
            for n, (uuid, token) in enumerate(jobs):
                data = {"step": step}
                per_job[uuid].append((name, data))
                body = event(uuid, name, token, data)
                # Short ids keep history entries small: every event rewrites its job's record,
                # history included, so entry size is test time.
                messages.append(OutgoingMessage(f"{uuid}#{step}", body, uuid,
                                                f"{run}.{n}.{step}"))
        return cls(jobs, per_job, messages)

    @property
    def sent(self) -> int:
        return len(self.messages)

    def steps(self, first: int, end: int) -> "Workload":
        """The messages of steps ``first`` to ``end - 1`` of every job (same jobs and oracle):
        publishing consecutive parts one after the other keeps each job's events in order."""
        n = len(self.jobs)
        return Workload(self.jobs, self.per_job, self.messages[first * n:end * n])

    def publish(self, setup: QueueSetup) -> None:
        report = publish(setup.amqp_url, setup.topology, self.messages)
        assert report.ok, f"publishing the workload: {report.failed[:3]}"

    def applied(self, app: App) -> int:
        """Events applied so far (history entries beyond ``create``)."""
        return sum(len(app.store.get_job(u)["history"]) - 1 for u, _ in self.jobs)

    def expected_state(self, uuid: str) -> str:
        state = lifecycle.INITIAL_STATE
        for name, _ in self.per_job[uuid]:
            state = lifecycle.next_state(state, name)
        return state

    def check(self, app: App, counts: str, ordered: bool = True) -> None:
        """Every event applied exactly once (in publish order when ``ordered``)."""
        problems = []
        for uuid, _ in self.jobs:
            record = app.store.get_job(uuid)
            history = record["history"][1:]
            keys = [h.get("key") for h in history]
            got = [(h["name"], h["data"]) for h in history]
            want = self.per_job[uuid]
            if len(set(keys)) != len(keys):
                problems.append(f"{uuid}: duplicate history keys")
            if ordered and got != want:
                problems.append(f"{uuid}: history differs from in-order application "
                                f"(got {len(got)} entries, want {len(want)})")
            if not ordered and sorted(map(json.dumps, got)) != sorted(map(json.dumps, want)):
                problems.append(f"{uuid}: history holds other events than were sent")
            if record["state"] != self.expected_state(uuid):
                problems.append(f"{uuid}: state {record['state']}, want "
                                f"{self.expected_state(uuid)}")
            if record["revision"] != 1 + len(want):
                problems.append(f"{uuid}: revision {record['revision']}, want {1 + len(want)}")
        assert not problems, f"{counts}; {len(problems)} problem(s): {problems[:5]}"


def count_lines(text: str, prefix: str) -> int:
    """Log lines of consumers whose message starts with ``prefix`` (e.g. ``duplicate:``)."""
    return sum(1 for line in text.splitlines() if f"reactor.consume.consumer {prefix}" in line)


# --------------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.lru_cache(maxsize=None)
def secantus_binary() -> str:
    """The path of the SecantusDB server that scripts/services.sh runs (built when absent)."""
    # The same lookup as the shared server (SECANTUS_BIN, else the cached build), so private
    # servers run exactly what the rest of the suite runs.
    out = subprocess.run(["bash", str(SERVICES), "binary", "secantusdb"], capture_output=True,
                         text=True, timeout=2400)  # a first build takes minutes
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        missing("a SecantusDB server for a private server",
                f"scripts/services.sh binary secantusdb exited {out.returncode}: "
                f"{out.stderr.strip()[-600:]}")
    return lines[-1]


class PrivateSecantusDB:
    """A SecantusDB of the test's own, on its own port and data directory, to stop, kill -9 and
    start again on the same data."""

    def __init__(self, binary: str, directory: Path, database: str = "outage"):
        self.binary = binary
        self.dir = directory
        self.data = directory / "data"
        self.log = directory / "secantusdb.log"
        self.port = free_port()
        self.uri = f"mongodb://127.0.0.1:{self.port}/{database}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server (again: same port, same data) and wait until it answers ping."""
        assert self.proc is None or self.proc.poll() is not None, "private SecantusDB is running"
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            # --sync-on-commit: a j:true write is an fsync, so a kill -9 loses no acknowledged
            # write; a small cache, because a test server holds little. cwd: no stray
            # ./secantusd.toml of the caller's is read.
            self.proc = subprocess.Popen(
                [self.binary, "--host", "127.0.0.1", "--port", str(self.port),
                 "--storage-path", str(self.data), "--sync-on-commit", "--cache-size", "256M"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.dir,
                start_new_session=True)
        wait_until(self._answers, 120, f"the private SecantusDB on port {self.port} to answer ping")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"private SecantusDB exited with code {self.proc.returncode} "
                                 f"during start-up; its log ends:\n{tail}")
        import pymongo

        client = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500)
        try:
            client.admin.command("ping")
            return True
        except pymongo.errors.PyMongoError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM (an orderly shutdown) and wait; a no-op when it is not running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush or close anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class PrivateBroker:
    """A second RabbitMQ node managed by scripts/services.sh (its own name, port and state)."""

    def __init__(self, state_dir: Path, port: int = 0, nodename: str = "reactor_restart_test"):
        self.port = port or int(os.environ.get("REACTOR_TEST_BROKER_PORT", "5699"))
        self.env = {k: v for k, v in os.environ.items() if k not in ("AMQP_URL", "MONGODB_URI")}
        self.env.update(REACTOR_SERVICES_DIR=str(state_dir), RABBITMQ_NODENAME=nodename,
                        RABBITMQ_NODE_PORT=str(self.port))
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _run(self, action: str) -> None:
        out = subprocess.run(["bash", str(SERVICES), action, "rabbitmq"], env=self.env,
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"services.sh {action} rabbitmq (private node) exited "
                               f"{out.returncode}: {out.stderr.strip()[-600:]}")

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        self._run("stop")


def start_private_secantus(directory: Path, database: str = "outage") -> PrivateSecantusDB:
    """A started SecantusDB of the test's own (stopping or killing it affects no other test)."""
    server = PrivateSecantusDB(secantus_binary(), directory, database)
    server.start()
    return server
