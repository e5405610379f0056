"""How job records look as MongoDB documents: keys escaped reversibly, timestamps as BSON dates.

Caller data may use any key; MongoDB would read ``$…`` as an operator and ``a.b`` as a path, so
every key is escaped on the way in and unescaped on the way out. Timestamps (ISO strings in the
records) are stored as BSON dates so server-side queries and sorts work on them.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from bson import ObjectId

from ..domain.records import now_iso
from .checks import parse_timestamp

# '%' is escaped first-class so every '%XX' in a stored key came from escaping, which makes the
# mapping reversible; '$' and '.' would be read as operators/paths, NUL cannot be in a BSON key.
_ESCAPES = {"%": "%25", "$": "%24", ".": "%2E", "\x00": "%00"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}
_NEEDS_ESCAPE = re.compile(r"[%$.\x00]")
_ESCAPED = re.compile(r"%(?:25|24|2E|00)")


def escape_key(key: str) -> str:
    """A key that MongoDB stores literally (no operator, no path)."""
    if _NEEDS_ESCAPE.search(key) is None:  # nearly every key: no substitution to set up
        return key
    return _NEEDS_ESCAPE.sub(lambda m: _ESCAPES[m.group()], key)


def unescape_key(key: str) -> str:
    """The original of a key made by ``escape_key``."""
    if "%" not in key:
        return key
    return _ESCAPED.sub(lambda m: _UNESCAPES[m.group()], key)


def escape(value: Any) -> Any:
    """A deep copy of ``value`` with every dict key escaped, at any depth."""
    if isinstance(value, dict):
        return {escape_key(k): escape(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [escape(v) for v in value]
    return value


def unescape(value: Any) -> Any:
    """The JSON value of a stored one: keys unescaped, datetimes as ISO strings."""
    if isinstance(value, dict):
        return {unescape_key(k): unescape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unescape(v) for v in value]
    if isinstance(value, datetime):
        return now_iso(value)
    if isinstance(value, ObjectId):
        return str(value)
    return value


def decode(doc: dict) -> dict:
    """A stored document as the JSON record callers see (without MongoDB's ``_id``)."""
    return unescape({k: v for k, v in doc.items() if k != "_id"})


def to_datetime(stamp: str) -> datetime:
    # Stored as BSON dates so server-side queries and sorts work on them; ms precision is what
    # both BSON and records.now_iso keep, so the string comes back identical.
    return parse_timestamp(stamp, "timestamp")


def encode_entry(entry: dict) -> dict:
    """A history entry as stored: escaped keys, ``date`` as a BSON date."""
    doc = escape(entry)
    doc["date"] = to_datetime(entry["date"])
    return doc


def encode_job(record: dict) -> dict:
    """A job record as stored: escaped keys, timestamps as BSON dates."""
    doc = escape({k: v for k, v in record.items() if k != "history"})
    doc["created"] = to_datetime(record["created"])
    doc["updated"] = to_datetime(record["updated"])
    doc["history"] = [encode_entry(h) for h in record["history"]]
    return doc
