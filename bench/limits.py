"""The physical limits, measured without reactor code: the broker and the two stores.

- broker: raw pika (SelectConnection, like the consumer) consuming and acking pre-published
  persistent messages with the consumer's prefetch, one ack per message or one multiple-ack
  per batch, and no processing at all;
- MongoDB-wire server: a tight pymongo loop of one compare-and-set (``find_one_and_update``
  with the reactor's filter and update shape and write concern) per event; and the same
  compare-and-sets as bulk writes of a group commit's batch size, what group commit could reach;
- embedded store: the same compare-and-set as a tight sqlite3 loop over the same table
  layout (schema version 2: job columns beside the record without its history, one history row
  per entry) and durability settings (WAL, synchronous=FULL, one BEGIN IMMEDIATE per event):
  duplicate-key check, conditional UPDATE of the job's columns, INSERT of the history row.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import time
import uuid as _uuid
from datetime import datetime, timezone

import pika
import pymongo
from pymongo.write_concern import WriteConcern

from workload import Workload

PIPELINE = "106bench-0000-5000-8000-000000000000"


# --- broker ---------------------------------------------------------------------------------------

def publish_raw(url: str, exchange: str, routing: list[tuple[str, bytes, str]]) -> None:
    """Publish (routing key, body, message id) triples as persistent messages, no confirms."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = conn.channel()
        for key, payload, message_id in routing:
            channel.basic_publish(exchange, key, payload, pika.BasicProperties(
                delivery_mode=2, message_id=message_id, content_type="application/json"))
    finally:
        conn.close()


def queue_depth(url: str, queue: str) -> int:
    """Ready messages in ``queue`` (passive declare)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def wait_depth(url: str, queues: list[str], depth: int, timeout_s: float = 300) -> None:
    """Wait until the broker holds ``depth`` ready messages in ``queues`` together."""
    deadline = time.monotonic() + timeout_s
    while sum(queue_depth(url, queue) for queue in queues) != depth:
        if time.monotonic() > deadline:
            raise RuntimeError(f"queues {queues} never held {depth} messages")
        time.sleep(0.05)


def delete_queues(url: str, queues: list[str], exchanges: list[str] = ()) -> None:
    """Delete benchmark queues and exchanges (missing ones are fine)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        for name in queues:
            channel = conn.channel()
            channel.queue_delete(name)
        for name in exchanges:
            channel = conn.channel()
            channel.exchange_delete(name)
    finally:
        conn.close()


def broker_ceiling(url: str, bodies: list[bytes], prefetch: int, ack_every: int) -> float:
    """msgs/s of raw consume + ack of ``bodies`` (ack each, or multiple every ``ack_every``)."""
    queue = f"bench.raw.{secrets.token_hex(4)}"
    conn = pika.BlockingConnection(pika.URLParameters(url))
    conn.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": "classic"})
    conn.close()
    try:
        publish_raw(url, "", [(queue, b, f"raw-{i}") for i, b in enumerate(bodies)])
        wait_depth(url, [queue], len(bodies))
        return _consume(url, queue, len(bodies), prefetch, ack_every)
    finally:
        delete_queues(url, [queue])


def _consume(url: str, queue: str, total: int, prefetch: int, ack_every: int) -> float:
    state = {"count": 0, "t0": 0.0, "t1": 0.0}

    def on_open(connection):
        connection.channel(on_open_callback=on_channel)

    def on_channel(channel):
        channel.basic_qos(prefetch_count=prefetch,
                          callback=lambda _frame: channel.basic_consume(queue, on_message))

    def on_message(channel, method, _props, _body):
        if not state["count"]:
            state["t0"] = time.perf_counter()
        state["count"] += 1
        count = state["count"]
        if ack_every <= 1:
            channel.basic_ack(method.delivery_tag)
        elif count % ack_every == 0 or count == total:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if count == total:
            state["t1"] = time.perf_counter()
            connection.close()

    params = pika.URLParameters(url)
    connection = pika.SelectConnection(params, on_open_callback=on_open,
                                       on_close_callback=lambda c, _r: c.ioloop.stop())
    connection.ioloop.start()
    if state["count"] != total:
        raise RuntimeError(f"raw consumer stopped after {state['count']} of {total}")
    return (total - 1) / (state["t1"] - state["t0"])


# --- stores ---------------------------------------------------------------------------------------

def _history_entry(name: str, data: dict | None, key: str | None) -> dict:
    return {"uuid": "108" + str(_uuid.uuid4())[3:], "name": name,
            "date": datetime.now(timezone.utc), "data": data, "key": key}


def _entry_data(payloads: list[bytes], index: int) -> dict:
    # The data a reactor entry would hold for this message: the message's own data.
    return json.loads(payloads[index])["data"]


def mongo_ceiling(uri: str, database: str, work: Workload, payloads: list[bytes]) -> float:
    """ops/s of one compare-and-set per event (majority, journaled): ``find_one_and_update``
    with the reactor's filter (the job's uuid, visibility, state, no entry with the key) and
    update, the one path every MongoDB server takes."""
    def run(jobs, uuids: list[str]) -> None:
        for i, ev in enumerate(work.events):
            query, update = _compare_and_set(ev, uuids[ev.job], payloads, i)
            found = jobs.find_one_and_update(query, update, projection={"history": 0},
                                             return_document=pymongo.ReturnDocument.AFTER)
            if found is None:
                raise RuntimeError(f"raw compare-and-set {i} missed")

    return len(work.events) / _timed_on_mongo(uri, database, work, run)


def mongo_bulk_ceiling(uri: str, database: str, work: Workload, payloads: list[bytes],
                       batch: int) -> float:
    """ops/s of the same compare-and-sets sent ``batch`` events at a time (in delivery order)
    as one ordered ``bulk_write`` each: what group commit could reach on this server."""
    def run(jobs, uuids: list[str]) -> None:
        for start in range(0, len(work.events), batch):
            chunk = work.events[start:start + batch]
            result = jobs.bulk_write([pymongo.UpdateOne(*_compare_and_set(
                ev, uuids[ev.job], payloads, start + n)) for n, ev in enumerate(chunk)])
            if result.modified_count != len(chunk):
                raise RuntimeError(f"raw bulk write at event {start}: "
                                   f"{len(chunk) - result.modified_count} missed")

    return len(work.events) / _timed_on_mongo(uri, database, work, run)


def _compare_and_set(ev, uuid: str, payloads: list[bytes], index: int) -> tuple[dict, dict]:
    """The reactor's filter and update for event ``ev`` of job ``uuid``."""
    entry = _history_entry(ev.name, _entry_data(payloads, index), "id:" + ev.message_id)
    update = {"$set": {"state": ev.to_state, "last_event": ev.name, "updated": entry["date"]},
              "$inc": {"revision": 1}, "$push": {"history": entry}}
    return ({"uuid": uuid, "_visible": True, "state": ev.from_state,
             "history.key": {"$ne": entry["key"]}}, update)


def _timed_on_mongo(uri: str, database: str, work: Workload, run) -> float:
    """Seconds ``run(jobs collection, job uuids)`` takes on fresh job documents (majority,
    journaled) in ``database``, dropped afterwards."""
    client = pymongo.MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=5000)
    try:
        db = client[database].with_options(write_concern=WriteConcern(w="majority", j=True))
        jobs = db["jobs"]
        jobs.create_index("uuid", unique=True)
        uuids = [f"107bench-{j:04x}-5000-8000-{secrets.token_hex(6)}" for j in range(work.jobs)]
        now = datetime.now(timezone.utc)
        jobs.insert_many([{"_id": u, "uuid": u, "pipeline_uuid": PIPELINE, "data": {"n": j},
                           "state": "CREATED", "last_event": "create", "created": now,
                           "updated": now, "revision": 1, "_visible": True,
                           "history": [_history_entry("create", {"n": j}, None)]}
                          for j, u in enumerate(uuids)])
        t0 = time.perf_counter()
        run(jobs, uuids)
        return time.perf_counter() - t0
    finally:
        client.drop_database(database)
        client.close()


SQLITE_SCHEMA = (
    """CREATE TABLE jobs (uuid TEXT PRIMARY KEY, state TEXT NOT NULL, revision INTEGER NOT NULL,
       visible INTEGER NOT NULL, pipeline_uuid TEXT, created TEXT NOT NULL, last_event TEXT,
       updated TEXT NOT NULL, body TEXT NOT NULL)""",
    "CREATE INDEX jobs_by_created ON jobs (created DESC, uuid)",
    "CREATE INDEX jobs_by_state ON jobs (state, created DESC)",
    "CREATE INDEX jobs_by_pipeline ON jobs (pipeline_uuid, created DESC)",
    """CREATE TABLE history (seq INTEGER PRIMARY KEY, job_uuid TEXT NOT NULL, key TEXT,
       body TEXT NOT NULL)""",
    "CREATE UNIQUE INDEX history_by_key ON history (job_uuid, key)",
)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def sqlite_ceiling(path: str, work: Workload, payloads: list[bytes]) -> float:
    """ops/s of one compare-and-set per event on the store's layout (WAL, synchronous=FULL):
    BEGIN IMMEDIATE, the duplicate-key check on the history's unique index, the conditional
    UPDATE of the job's columns (RETURNING the record's body and columns, as the reactor reads
    them back), the INSERT of the entry's history row, COMMIT."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        for statement in SQLITE_SCHEMA:
            conn.execute(statement)
        uuids = [f"107bench-{j:04x}-5000-8000-{secrets.token_hex(6)}" for j in range(work.jobs)]
        now = _iso(datetime.now(timezone.utc))
        conn.execute("BEGIN IMMEDIATE")
        for j, u in enumerate(uuids):
            record = {"uuid": u, "pipeline_uuid": PIPELINE, "data": {"n": j}, "state": "CREATED",
                      "last_event": "create", "created": now, "updated": now, "revision": 1,
                      "_visible": True}
            conn.execute("INSERT INTO jobs VALUES (?, 'CREATED', 1, 1, ?, ?, 'create', ?, ?)",
                         (u, PIPELINE, now, now, _json(record)))
            create = dict(_history_entry("create", {"n": j}, None), date=now)
            conn.execute("INSERT INTO history (job_uuid, key, body) VALUES (?, NULL, ?)",
                         (u, _json(create)))
        conn.execute("COMMIT")
        t0 = time.perf_counter()
        for i, ev in enumerate(work.events):
            entry = dict(_history_entry(ev.name, _entry_data(payloads, i),
                                        "id:" + ev.message_id),
                         date=_iso(datetime.now(timezone.utc)))
            uid = uuids[ev.job]
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute("SELECT 1 FROM history WHERE job_uuid = ? AND key = ?",
                            (uid, entry["key"])).fetchone() is not None:
                raise RuntimeError(f"raw compare-and-set {i} found its key")
            rows = conn.execute(
                "UPDATE jobs SET state = ?, revision = revision + 1, last_event = ?, updated = ? "
                "WHERE uuid = ? AND visible = 1 AND state = ? "
                "RETURNING body, state, revision, visible, last_event, updated",
                (ev.to_state, ev.name, entry["date"], uid, ev.from_state)).fetchall()
            if not rows:
                raise RuntimeError(f"raw compare-and-set {i} missed")
            conn.execute("INSERT INTO history (job_uuid, key, body) VALUES (?, ?, ?)",
                         (uid, entry["key"], _json(entry)))
            conn.execute("COMMIT")
        return len(work.events) / (time.perf_counter() - t0)
    finally:
        conn.close()
