"""The reactor measured as it runs: ``reactor consume`` end to end, latency at a fixed load,
memory, ``reactor invoke`` cold start, and the pipeline's CPU cost per message in-process."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid as _uuid
from dataclasses import dataclass, field
from pathlib import Path

import pymongo

from limits import delete_queues, publish_raw, queue_depth, wait_depth
from workload import Workload, body

SECRET = "bench-secret-" + "z" * 24  # a benchmark-only secret, never a deployment value
PIPELINE_NAME = "bench-pipeline"


def reactor_command() -> list[str]:
    """How an operator starts the reactor: the console script, else the module."""
    found = shutil.which("reactor")
    return [found] if found else [sys.executable, "-m", "reactor.cli.main"]


@dataclass
class Setup:
    """One reactor deployment for one measurement: a fresh store (``kind`` sqlite or mongo),
    its own broker names, the benchmark secret, and configuration ``options``."""

    kind: str
    amqp_url: str
    workdir: Path
    mongo_uri: str = ""
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        tag = "bench" + _uuid.uuid4().hex[:8]
        self.names = {"exchange": f"{tag}.x", "queue": f"{tag}.q",
                      "dead_letter_queue": f"{tag}.dead", "retry_queue": f"{tag}.retry"}
        if self.kind == "sqlite":
            self.store_dir = self.workdir / tag
            self.store_dir.mkdir(parents=True)
            self.store_uri = f"sqlite:///{self.store_dir / 'reactor.db'}"
        else:
            scheme, rest = self.mongo_uri.rstrip("/").split("://", 1)
            host, _, query = rest.partition("/")
            query = query.partition("?")[2]
            self.store_uri = f"{scheme}://{host}/{tag}" + (f"?{query}" if query else "")
        self._app = None

    def env(self) -> dict:
        """The environment of ``reactor`` subprocesses for this setup."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("REACTOR_")}
        # JSON logs: the latency measurement reads the consumer's per-message lines.
        values = {"store_uri": self.store_uri, "broker_url": self.amqp_url, "secret": SECRET,
                  "log_format": "json", **self.names, **self.options}
        env.update({"REACTOR_" + k.upper(): str(v) for k, v in values.items()})
        return env

    @property
    def app(self):
        """An in-process App on the same store and secret (to create jobs, read results)."""
        if self._app is None:
            from reactor.app import App

            self._app = App.from_env({k: v for k, v in self.env().items()
                                      if k.startswith("REACTOR_")})
        return self._app

    def create_jobs(self, count: int) -> tuple[list[str], list[str]]:
        """Register the pipeline and create ``count`` jobs; their uuids and tokens."""
        from reactor.domain.identifiers import pipeline_uuid

        p = pipeline_uuid(PIPELINE_NAME)
        self.app.store.add_pipeline({"uuid": p, "name": PIPELINE_NAME})
        uuids = [self.app.jobs.create(p, data={"job": j, "setup": self.names["queue"]})[0]["uuid"]
                 for j in range(count)]
        return uuids, [self.app.authority.job_token(u) for u in uuids]

    def declare(self) -> None:
        """Declare the reactor's topology (as the consumer will) so messages can wait in it."""
        from reactor.broker.confirming import ConfirmingPublisher
        from reactor.broker.topology import Topology

        ConfirmingPublisher(self.amqp_url, Topology.from_settings(self.app.settings)).close()

    @property
    def topology(self):
        """The reactor's queue layout for this setup (partitioned if ``options`` say so)."""
        from reactor.broker.topology import Topology

        return Topology.from_settings(self.app.settings)

    @property
    def health_path(self) -> Path:
        """The consumer's health file."""
        return self.workdir / f"health-{self.names['queue']}.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"consumer-{self.names['queue']}.log"

    def start_consumer(self, processes: int = 1) -> subprocess.Popen:
        """``reactor consume`` (``--processes``, one member each of the setup's ``partitions``)
        with a health file; its log goes to the work directory."""
        log = open(self.log_path, "wb")
        command = [*reactor_command(), "consume", "--health-file", str(self.health_path),
                   "--health-interval", "0.2"]
        if processes > 1:
            command += ["--processes", str(processes)]
        proc = subprocess.Popen(command, cwd=self.workdir, env=self.env(), stdout=log, stderr=log)
        log.close()
        return proc

    def close(self) -> None:
        """Delete the topology and the store's data."""
        try:
            topology = self.topology
            queues = [*topology.main_queues, self.names["dead_letter_queue"],
                      *{topology.retry_queue_for(q) for q in topology.main_queues}]
            exchanges = [self.names["exchange"]] + ([topology.hash_exchange]
                                                    if topology.partitions else [])
            delete_queues(self.amqp_url, queues, exchanges)
        finally:
            if self._app is not None:
                self._app.close()
            if self.kind == "mongo":
                client = pymongo.MongoClient(self.store_uri, serverSelectionTimeoutMS=5000)
                client.drop_database(client.get_default_database().name)
                client.close()
            else:
                shutil.rmtree(self.store_dir, ignore_errors=True)


# --- reading results straight from the store -------------------------------------------------

def applied_count(setup: Setup, jobs: int) -> int:
    """Events applied so far (sum of revisions minus the jobs' create revisions)."""
    uri = setup.store_uri
    if uri.startswith("sqlite"):
        conn = sqlite3.connect(uri[len("sqlite:///"):])
        try:
            (total,) = conn.execute("SELECT COALESCE(SUM(revision), 0) FROM jobs").fetchone()
        finally:
            conn.close()
        return total - jobs
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        rows = list(client.get_default_database()["jobs"].aggregate(
            [{"$group": {"_id": None, "total": {"$sum": "$revision"}}}]))
    finally:
        client.close()
    return (rows[0]["total"] if rows else 0) - jobs


def commit_dates(setup: Setup) -> dict[str, float]:
    """Message id → commit time (epoch s) from each history entry the benchmark caused (read
    through the store's own API, so it holds whatever the store's layout)."""
    out = {}
    for record in setup.app.store.list_jobs(limit=10_000_000):
        for h in record["history"]:
            if (h.get("key") or "").startswith("id:bench-"):
                out[h["key"][3:]] = _epoch(h["date"])
    return out


def _epoch(stamp: str) -> float:
    from datetime import datetime, timezone

    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc).timestamp()


def settle_times(log_path: Path) -> dict[str, float]:
    """Message id → when the consumer logged it settled: its JSON log line for an applied or
    duplicate outcome, written on the IO thread once the ack is sent (so after the commit)."""
    out = {}
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("outcome") in ("applied", "duplicate") \
                and doc.get("message_id") and doc.get("time"):
            out[doc["message_id"]] = _epoch(doc["time"])
    return out


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM), in MB, of ``pid`` plus its child processes (the
    consumer's pipeline process), each its own peak so far."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            total = int(line.split()[1]) / 1024
            break
    else:
        raise RuntimeError(f"no VmHWM for pid {pid}")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return total + sum(peak_rss_mb(int(child)) for child in children)


# --- running a consumer ----------------------------------------------------------------------

def _wait_ready(proc: subprocess.Popen, health: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"consumer exited with {proc.returncode} before it was ready")
        try:
            if json.loads(health.read_text()).get("status") == "consuming":
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("consumer never became ready")
        time.sleep(0.05)


def _wait_applied(setup: Setup, proc: subprocess.Popen, jobs: int, total: int,
                  timeout_s: float, on_progress=None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        done = applied_count(setup, jobs)
        if on_progress:
            on_progress(done)
        if done >= total:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"consumer exited with {proc.returncode} after {done} of {total}; "
                               f"log: {setup.log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {total} applied after {timeout_s:.0f}s")
        time.sleep(0.25)


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError("consumer ignored SIGTERM for 60 s") from None


def _publish_workload(setup: Setup, work: Workload, uuids: list[str], tokens: list[str]) -> None:
    messages = [(uuids[e.job], body(e, uuids[e.job], tokens[e.job]), e.message_id)
                for e in work.events]
    publish_raw(setup.amqp_url, setup.names["exchange"], messages)
    wait_depth(setup.amqp_url, setup.topology.main_queues, len(messages))


def _check_clean(setup: Setup, expected: int) -> None:
    dead = queue_depth(setup.amqp_url, setup.names["dead_letter_queue"])
    if dead:
        raise RuntimeError(f"{dead} message(s) were dead-lettered; log: {setup.log_path}")
    if applied_count(setup, 0) < expected:
        raise RuntimeError("not every event was applied")


def _consume_published(setup: Setup, work: Workload, processes: int = 1) -> subprocess.Popen:
    """Create the jobs, pre-publish the whole workload, then start ``reactor consume``."""
    uuids, tokens = setup.create_jobs(work.jobs)
    setup.declare()
    _publish_workload(setup, work, uuids, tokens)
    return setup.start_consumer(processes)


def end_to_end(setup: Setup, work: Workload, processes: int = 1) -> dict:
    """``reactor consume`` draining the pre-published workload: msgs/s between the first and
    the last commit (read from the records), and whether it stopped cleanly. ``processes`` > 1
    is ``reactor consume --processes`` (the setup's ``partitions`` must be at least that)."""
    try:
        proc = _consume_published(setup, work, processes)
        try:
            _wait_applied(setup, proc, work.jobs, len(work), timeout_s=1800)
        finally:
            code = _stop(proc)
        _check_clean(setup, len(work) + work.jobs)
        dates = sorted(commit_dates(setup).values())
        if len(dates) != len(work):
            raise RuntimeError(f"{len(dates)} committed entries for {len(work)} messages")
        return {"msgs_s": (len(dates) - 1) / max(dates[-1] - dates[0], 1e-3), "exit": code}
    finally:
        setup.close()


def latency(setup: Setup, work: Workload, rate: float) -> dict:
    """p50/p99 ms from publish to commit while publishing at a steady ``rate`` msgs/s."""
    try:
        uuids, tokens = setup.create_jobs(work.jobs)
        proc = setup.start_consumer()
        sent: dict[str, float] = {}
        try:
            _wait_ready(proc, setup.health_path)
            import pika

            # Messages and their properties are built before the clock starts, and the
            # publisher sleeps only when it is 1 ms or more ahead: the load generator shares
            # the two vCPUs with the consumer and the broker, so it should cost them little.
            messages = [(e.message_id, uuids[e.job], body(e, uuids[e.job], tokens[e.job]),
                         pika.BasicProperties(delivery_mode=2, message_id=e.message_id))
                        for e in work.events]
            conn = pika.BlockingConnection(pika.URLParameters(setup.amqp_url))
            channel = conn.channel()
            exchange = setup.names["exchange"]
            start = time.perf_counter()
            for i, (message_id, key, payload, properties) in enumerate(messages):
                delay = start + i / rate - time.perf_counter()
                if delay >= 0.001:
                    time.sleep(delay)
                sent[message_id] = time.time()
                channel.basic_publish(exchange, key, payload, properties)
            conn.close()
            _wait_applied(setup, proc, work.jobs, len(work), timeout_s=1800)
        finally:
            code = _stop(proc)
        _check_clean(setup, len(work) + work.jobs)
        settled = settle_times(setup.log_path)
        source = "consumer log (after commit)"
        if len(settled) < len(work):  # no per-message log lines: fall back to entry dates
            settled, source = commit_dates(setup), "history entry dates (before commit)"
        waits = sorted((settled[m] - t) * 1000 for m, t in sent.items() if m in settled)
        return {"p50_ms": _percentile(waits, 50), "p99_ms": _percentile(waits, 99),
                "rate": rate, "count": len(waits), "source": source, "exit": code}
    finally:
        setup.close()


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    k = max(0, min(len(values) - 1, round(pct / 100 * len(values) + 0.5) - 1))
    return sorted(values)[k]


def memory(setup: Setup, work: Workload, first: int) -> dict:
    """Peak RSS (MB) of the consumer once ``first`` events are applied, and at the end."""
    try:
        proc = _consume_published(setup, work)
        marks: dict[str, float] = {}

        def watch(done: int) -> None:
            if done >= first and "first" not in marks:
                marks["first"] = peak_rss_mb(proc.pid)

        try:
            _wait_applied(setup, proc, work.jobs, len(work), timeout_s=3600, on_progress=watch)
            marks["last"] = peak_rss_mb(proc.pid)
        finally:
            code = _stop(proc)
        _check_clean(setup, len(work) + work.jobs)
        return {"rss_first_mb": marks["first"], "rss_last_mb": marks["last"], "exit": code}
    finally:
        setup.close()


# --- in-process and one-shot measurements ------------------------------------------------------

def cpu_per_message(store_uri: str, work: Workload, reps: int) -> dict:
    """µs of CPU per message for the pipeline's own steps, store and broker cut out:
    prepare (size, decode, classify, validate), plan (token, transition, history entry) and
    the store update document. Median over ``reps`` passes."""
    from reactor.app import App
    from reactor.domain.identifiers import pipeline_uuid
    from reactor.engine.pipeline import Pipeline
    from reactor.store.bson_codec import encode_entry

    app = App.from_env({"REACTOR_STORE_URI": store_uri, "REACTOR_SECRET": SECRET})
    try:
        p = pipeline_uuid(PIPELINE_NAME)
        app.store.add_pipeline({"uuid": p, "name": PIPELINE_NAME})
        uuids = [app.jobs.create(p, data={"cpu": j})[0]["uuid"] for j in range(work.jobs)]
        tokens = [app.authority.job_token(u) for u in uuids]
        pipeline = Pipeline(app.jobs)
        jobs = app.jobs
        items = [(body(e, uuids[e.job], tokens[e.job]), e.message_id, e.from_state)
                 for e in work.events]
        stages = {"prepare": [], "plan": [], "update": []}
        for _ in range(reps):
            prepared, planned = [], []
            t0 = time.process_time()
            for payload, message_id, _state in items:
                prepared.append(pipeline.prepare(payload, message_id))
            t1 = time.process_time()
            date = jobs.clock()
            for prep, (_p, _m, state) in zip(prepared, items):
                m = prep.message
                # As group commit plans: the data was just decoded, so it is neither checked
                # again nor copied (private_data).
                planned.append(jobs.plan(m.uuid, m.event, m.data, m.token, prep.key, state, date,
                                         private_data=True))
            t2 = time.process_time()
            for change in planned:
                encode_entry(change.entry)
            t3 = time.process_time()
            n = len(items)
            stages["prepare"].append((t1 - t0) / n * 1e6)
            stages["plan"].append((t2 - t1) / n * 1e6)
            stages["update"].append((t3 - t2) / n * 1e6)
        out = {k: statistics.median(v) for k, v in stages.items()}
        out["total"] = sum(out.values())
        return out
    finally:
        app.close()


def cold_start(workdir: Path, runs: int) -> dict:
    """Median wall ms of ``reactor invoke`` (one event, embedded store) and ``python -c pass``."""
    from reactor.app import App
    from reactor.domain.identifiers import pipeline_uuid

    db = workdir / "invoke.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REACTOR_")}
    env.update({"REACTOR_STORE_URI": f"sqlite:///{db}", "REACTOR_SECRET": SECRET})
    app = App.from_env({k: v for k, v in env.items() if k.startswith("REACTOR_")})
    p = pipeline_uuid(PIPELINE_NAME)
    app.store.add_pipeline({"uuid": p, "name": PIPELINE_NAME})
    uuid = app.jobs.create(p, data={"invoke": True})[0]["uuid"]
    token = app.authority.job_token(uuid)
    app.jobs.apply(uuid, "run", token=token)
    app.close()
    invoke_ms, floor_ms = [], []
    for i in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        floor_ms.append((time.perf_counter() - t0) * 1000)
        run_env = dict(env, MSG=json.dumps({"uuid": uuid, "name": "update", "token": token,
                                            "data": {"i": i}}), message_id=f"invoke-{i}")
        t0 = time.perf_counter()
        done = subprocess.run([*reactor_command(), "invoke"], env=run_env, cwd=workdir,
                              capture_output=True, text=True)
        invoke_ms.append((time.perf_counter() - t0) * 1000)
        if done.returncode != 0 or '"applied"' not in done.stdout:
            raise RuntimeError(f"reactor invoke failed ({done.returncode}): {done.stdout} "
                               f"{done.stderr[-400:]}")
    return {"invoke_ms": statistics.median(invoke_ms), "python_floor_ms":
            statistics.median(floor_ms)}
