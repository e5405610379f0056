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

The broker URL may name several nodes of a cluster (comma-separated): the first that answers,
in a shuffled order, is used. If the connection is lost mid-run, the publisher connects again
(another node first, with capped backoff between rounds over all of them), declares the
topology again and sends the message whose confirm never came once more: its message id makes
a copy that did arrive a duplicate.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid as _uuid
from dataclasses import dataclass, field
from typing import Iterable

from ..domain.errors import BrokerError, ValidationError
from ..domain.identifiers import check_typed
from .confirming import ConfirmingPublisher
from .endpoints import Endpoints
from .failures import BrokerRefused, Waits, capped_backoff
from .topology import Topology

# Reconnection rounds (every URL tried once each) after a lost connection, with the capped
# backoff between them (0.5 s doubling): about half a minute before the rest is given up.
RECONNECT_ROUNDS = 6
# Lost connections one message may cost before it counts as not confirmed: a message the broker
# answers by closing the channel (say, one beyond its size limit) must not loop forever.
TRIES_PER_MESSAGE = 3
APP_ID = "reactor publish"


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
    reconnects: list[str] = field(default_factory=list)  # what was lost, where it went on

    @property
    def ok(self) -> bool:
        return self.confirmed == self.total


def routing_key(doc: object) -> str:
    """The job uuid of a message (its routing key), or "" when it names none."""
    try:
        return check_typed(doc.get("uuid") if isinstance(doc, dict) else None, "pipelinejob")
    except ValueError:
        return ""


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


class _Session:
    """The publisher of one ``publish`` run, connected again when its connection is lost."""

    def __init__(self, url: "str | Endpoints", topology: Topology, report: PublishReport,
                 rounds: int = RECONNECT_ROUNDS, sleep=time.sleep):
        self.endpoints = Endpoints.of(url, APP_ID)
        self.topology = topology
        self.report = report
        self.rounds = rounds
        self.sleep = sleep
        self.gone: str | None = None  # why nothing more can be sent, once that is so
        self.publisher: ConfirmingPublisher | None = ConfirmingPublisher(self.endpoints,
                                                                         topology)

    def send(self, msg: OutgoingMessage) -> str | None:
        """Publish ``msg`` until the broker confirms it; None then, else why not."""
        props = {"message_id": msg.message_id, "content_type": "application/json",
                 "delivery_mode": 2, "timestamp": int(time.time()), "app_id": APP_ID}
        for _ in range(TRIES_PER_MESSAGE):
            if self.gone is not None:
                return self.gone
            try:
                self.publisher.publish(self.topology.exchange, msg.routing_key, msg.body, props)
                return None
            except BrokerError as exc:
                if self.publisher.is_open:
                    return str(exc)  # refused or unroutable on a live connection: an answer
                last = str(exc)
                self._reconnect(last)
        return self.gone or (f"not confirmed: the connection was lost {TRIES_PER_MESSAGE} "
                             f"times while sending it; last: {last}")

    def _reconnect(self, why: str) -> None:
        """Open a new publisher (next node first); sets ``gone`` if every round failed."""
        self.close()
        waits = Waits(capped_backoff(0.5, 30.0))
        for _ in range(self.rounds):
            self.sleep(waits.next())
            try:
                self.publisher = ConfirmingPublisher(self.endpoints, self.topology)
            except BrokerRefused as exc:
                why = str(exc)
                break
            except BrokerError as exc:
                why = str(exc)
                continue
            self.report.reconnects.append(f"{why}; reconnected to {self.publisher.url}")
            return
        self.gone = f"not sent: the connection was lost and could not be opened again: {why}"

    def close(self) -> None:
        """Close the current connection, if any."""
        publisher, self.publisher = self.publisher, None
        if publisher is not None:
            publisher.close()


def publish(url: "str | Endpoints", topology: Topology, messages: Iterable[OutgoingMessage],
            rounds: int = RECONNECT_ROUNDS) -> PublishReport:
    """Declare the topology and publish each message, waiting for its confirm (connecting
    again, up to ``rounds`` rounds over the broker URLs, when the connection is lost).

    ``messages`` is read as it is sent, so a caller may hand them over as they come."""
    report = PublishReport()
    session = _Session(url, topology, report, rounds)
    try:
        for msg in messages:
            report.total += 1
            why = session.send(msg)
            if why is None:
                report.confirmed += 1
            else:
                report.failed.append((msg.source, why))
    finally:
        session.close()
    return report
