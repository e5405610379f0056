"""Publish event messages to the reactor's exchange with publisher confirms (``reactor publish``).

Accepted input, per file (or standard input for ``-``):

- one JSON object;
- a JSON array of objects (one message each);
- JSON lines: one object per line, blank lines ignored.

With ``raw`` each file's bytes are one message as they are, unparsed (to send malformed input on
purpose). Everything is read and checked before anything is published, so a bad file publishes
nothing.

Each message is persistent, routed by its job uuid, and carries a message id. By default the id
is a digest of the body, the same key the reactor falls back to without one, so publishing a
file again is harmless (the copies are duplicates); ``unique_ids`` gives every message a fresh
id instead.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
import uuid as _uuid
from dataclasses import dataclass, field
from typing import Iterable

from .errors import ValidationError
from .transport import BrokerError, ConfirmingPublisher, Topology

_JOB_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to publish, with where it came from (``file``, ``file[3]``, ``file:7``)."""

    source: str
    body: bytes
    routing_key: str
    message_id: str


@dataclass
class PublishReport:
    """How many messages the broker confirmed, and which were not (with why)."""

    total: int = 0
    confirmed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.confirmed == self.total


def routing_key(doc: object) -> str:
    """The job uuid of a message (its routing key), or "" when it names none."""
    value = doc.get("uuid") if isinstance(doc, dict) else None
    return value if isinstance(value, str) and _JOB_UUID.fullmatch(value) else ""


def message_id(body: bytes, unique: bool = False) -> str:
    """A fresh id (``unique``) or one derived from the body (re-publishing is idempotent)."""
    return str(_uuid.uuid4()) if unique else "sha256:" + hashlib.sha256(body).hexdigest()


def parse_messages(name: str, data: bytes, raw: bool = False,
                   unique_ids: bool = False) -> list[OutgoingMessage]:
    """The messages in one input; ValidationError naming the input and the problem."""
    if raw:
        if not data:
            raise ValidationError(f"{name}: empty input")
        try:
            key = routing_key(json.loads(data))
        except (ValueError, RecursionError):
            key = ""
        return [OutgoingMessage(name, data, key, message_id(data, unique_ids))]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{name}: not UTF-8 text (byte {exc.start}); use --raw to send "
                              "bytes as they are") from None
    if not text.strip():
        raise ValidationError(f"{name}: empty input: expected a JSON object, a JSON array of "
                              "objects, or JSON lines")
    try:
        doc = json.loads(text)
    except ValueError:
        return _json_lines(name, text, unique_ids)
    if isinstance(doc, dict):
        body = text.strip().encode("utf-8")  # one object: sent exactly as written
        return [OutgoingMessage(name, body, routing_key(doc), message_id(body, unique_ids))]
    if isinstance(doc, list):
        if not doc:
            raise ValidationError(f"{name}: the JSON array is empty")
        out = []
        for i, item in enumerate(doc):
            if not isinstance(item, dict):
                raise ValidationError(f"{name}[{i}]: expected a JSON object, got "
                                      f"{type(item).__name__}")
            out.append(_message(f"{name}[{i}]", item, unique_ids))
        return out
    raise ValidationError(f"{name}: expected a JSON object, a JSON array of objects, or JSON "
                          f"lines, got a JSON {type(doc).__name__}")


def _json_lines(name: str, text: str, unique_ids: bool) -> list[OutgoingMessage]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise ValidationError(f"{name}:{number}: not valid JSON ({exc}); a file must hold "
                                  "one JSON object, a JSON array of objects, or one object "
                                  "per line") from None
        if not isinstance(doc, dict):
            raise ValidationError(f"{name}:{number}: expected a JSON object, got "
                                  f"{type(doc).__name__}")
        out.append(_message(f"{name}:{number}", doc, unique_ids))
    return out


def _message(source: str, doc: dict, unique_ids: bool) -> OutgoingMessage:
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return OutgoingMessage(source, body, routing_key(doc), message_id(body, unique_ids))


def publish(url: str, topology: Topology, messages: Iterable[OutgoingMessage]) -> PublishReport:
    """Declare the topology and publish each message, waiting for its confirm."""
    messages = list(messages)
    report = PublishReport(total=len(messages))
    with ConfirmingPublisher(url, topology) as publisher:
        for msg in messages:
            if not publisher.is_open:
                report.failed.append((msg.source, "not sent: the connection was lost"))
                continue
            props = {"message_id": msg.message_id, "content_type": "application/json",
                     "delivery_mode": 2, "timestamp": int(time.time()),
                     "app_id": "reactor publish"}
            try:
                publisher.publish(topology.exchange, msg.routing_key, msg.body, props)
            except BrokerError as exc:
                report.failed.append((msg.source, str(exc)))
            else:
                report.confirmed += 1
    return report
