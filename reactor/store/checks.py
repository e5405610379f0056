"""Input checks shared by every backend, so each refuses exactly the same inputs (no I/O).

They run on every event (``check_entry`` once per history entry), so they stay cheap: one
compiled regex and C-level parsing, no ``strptime``.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from ..domain import jsonvalues
from ..domain.records import LINKAGE_FIELDS

# ASCII digits only: a timestamp must read back as the very same string from every backend.
TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")
COLLECTION_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
RESERVED_COLLECTIONS = ("jobs", "pipelines")


def check_json(value: Any, what: str) -> None:
    """Raise ValueError unless ``value`` is JSON-compatible (string keys, finite numbers, int64)."""
    # MongoDB's limits (nesting, 64-bit integers), held by the embedded store too, so both
    # backends accept exactly the same records.
    jsonvalues.check_json(value, what, jsonvalues.RECORD_MAX_DEPTH, nul_keys=True)


def parse_timestamp(value: Any, what: str) -> datetime:
    """The UTC datetime of a timestamp as ``records.now_iso`` writes it, else ValueError."""
    # fullmatch, not match with "$": "$" would also accept a trailing newline.
    if isinstance(value, str) and TIMESTAMP.fullmatch(value):
        try:
            # The shape is fixed by the regex; this checks the calendar (Feb 30, hour 24, …).
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"{what} must be a UTC timestamp like 2024-01-31T12:00:00.000Z, "
                     f"got {value!r}")


def check_timestamp(value: Any, what: str) -> str:
    """Return ``value`` if it is a timestamp as ``records.now_iso`` writes it, else ValueError."""
    parse_timestamp(value, what)
    return value


def check_uuid(value: Any, what: str) -> str:
    """Return ``value`` if it is a non-empty string, else raise ValueError naming ``what``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def check_collection(name: Any) -> str:
    """Return ``name`` if it may name a collection of linked documents, else ValueError."""
    if not isinstance(name, str) or not COLLECTION_NAME.fullmatch(name) or len(name) > 64:
        raise ValueError(f"collection name {name!r} is invalid; use lower-case letters, digits "
                         "and underscores, starting with a letter or underscore")
    if name in RESERVED_COLLECTIONS:
        raise ValueError(f"collection {name!r} is reserved; use the job or pipeline operations")
    return name


def _check_top_level(doc: dict, what: str) -> None:
    # MongoDB owns "_id" (immutable, unique); neither backend lets a caller set it.
    if "_id" in doc:
        raise ValueError(f"{what} must not have an '_id' field; the store manages it")


def check_entry(entry: Any) -> dict:
    """Return ``entry`` if it is a well-formed history entry, else raise ValueError."""
    if not isinstance(entry, dict):
        raise ValueError(f"history entry must be a dict, got {type(entry).__name__}")
    check_uuid(entry.get("name"), "history entry 'name'")
    check_timestamp(entry.get("date"), "history entry 'date'")
    if entry.get("data") is not None and not isinstance(entry["data"], dict):
        raise ValueError("history entry 'data' must be a dict or None")
    if entry.get("key") is not None and not isinstance(entry["key"], str):
        raise ValueError("history entry 'key' must be a string or None")
    check_json(entry, "history entry")
    return entry


def check_state_change(uuid: Any, from_state: Any, to_state: Any, entry: Any) -> dict:
    """Return ``entry`` if ``(uuid, from_state, to_state, entry)`` is a well-formed change."""
    check_uuid(uuid, "job uuid")
    check_uuid(from_state, "from_state")
    check_uuid(to_state, "to_state")
    return check_entry(entry)


def check_waves(waves: Any) -> list[list[tuple[str, str, str, dict]]]:
    """Return ``waves`` as lists if each is a list of changes ``check_changes`` accepts; a bad
    one raises ValueError naming its wave and position."""
    try:
        items = list(waves)
    except TypeError:
        raise ValueError(f"waves must be a sequence of sequences of changes, got "
                         f"{type(waves).__name__}") from None
    out = []
    for index, wave in enumerate(items):
        try:
            out.append(check_changes(wave))
        except ValueError as exc:
            raise ValueError(f"wave {index}: {exc}") from None
    return out


def check_changes(changes: Any) -> list[tuple[str, str, str, dict]]:
    """Return ``changes`` as a list if every one is a well-formed change for a distinct job.

    A change is ``(uuid, from_state, to_state, entry)``; a bad one raises ValueError naming
    its position, so a batch is refused whole before anything is written.
    """
    try:
        items = list(changes)
    except TypeError:
        raise ValueError(f"changes must be a sequence of (uuid, from_state, to_state, entry), "
                         f"got {type(changes).__name__}") from None
    seen: dict[str, int] = {}
    out = []
    for index, change in enumerate(items):
        if not isinstance(change, (tuple, list)) or len(change) != 4:
            raise ValueError(f"change {index} must be (uuid, from_state, to_state, entry), "
                             f"got {change!r:.80}")
        uuid, from_state, to_state, entry = change
        try:
            check_state_change(uuid, from_state, to_state, entry)
        except ValueError as exc:
            raise ValueError(f"change {index}: {exc}") from None
        if uuid in seen:
            # One compare-and-set per job and batch: the second change of a job must be
            # computed from the first one's result, so it belongs in a later batch.
            raise ValueError(f"change {index}: job {uuid} already has change {seen[uuid]} in "
                             "this batch; a batch holds at most one change per job")
        seen[uuid] = index
        out.append((uuid, from_state, to_state, entry))
    return out


def check_job_record(record: Any) -> dict:
    """Return a copy of ``record`` (with ``_visible`` defaulted) if it is a storable job."""
    if not isinstance(record, dict):
        raise ValueError(f"job record must be a dict, got {type(record).__name__}")
    _check_top_level(record, "job record")
    check_uuid(record.get("uuid"), "job 'uuid'")
    check_uuid(record.get("pipeline_uuid"), "job 'pipeline_uuid'")
    check_uuid(record.get("state"), "job 'state'")
    revision = record.get("revision")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        raise ValueError(f"job 'revision' must be a non-negative integer, got {revision!r}")
    check_timestamp(record.get("created"), "job 'created'")
    check_timestamp(record.get("updated"), "job 'updated'")
    if not isinstance(record.get("history"), list):
        raise ValueError("job 'history' must be a list of entries")
    keys: set[str] = set()
    for entry in record["history"]:
        check_entry(entry)
        key = entry.get("key")
        if key is not None:
            # A duplicate key marks one applied message: two entries cannot both be it.
            if key in keys:
                raise ValueError(f"job 'history' has two entries with the key {key!r}; a "
                                 "duplicate key may appear once per job")
            keys.add(key)
    if not isinstance(record.get("_visible", True), bool):
        raise ValueError("job '_visible' must be a boolean")
    check_json(record, "job record")
    return {**record, "_visible": record.get("_visible", True)}


def check_pipeline(doc: Any) -> dict:
    """Return ``doc`` if it is a registrable pipeline ``{uuid, name, ...}``, else ValueError."""
    return _check_named(doc, "pipeline", ("uuid", "name"))


def check_document(doc: Any) -> dict:
    """Return ``doc`` if it is a storable linked document with a ``uuid``, else ValueError."""
    return _check_named(doc, "document", ("uuid",))


def _check_named(doc: Any, what: str, required: tuple[str, ...]) -> dict:
    """``doc`` if it is a dict with the non-empty string fields ``required``, JSON throughout."""
    if not isinstance(doc, dict):
        raise ValueError(f"{what} must be a dict, got {type(doc).__name__}")
    _check_top_level(doc, what)
    for name in required:
        check_uuid(doc.get(name), f"{what} '{name}'")
    check_json(doc, what)
    return doc


def check_query(state: Any, pipeline_uuid: Any, limit: Any) -> None:
    """Raise ValueError for a bad ``list_jobs`` filter or limit."""
    for name, value in (("state", state), ("pipeline_uuid", pipeline_uuid)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} filter must be a string or None, got {value!r}")
        if value is not None:
            jsonvalues.check_text(value, f"{name} filter")  # a lone surrogate cannot be sent
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")


def check_delete(force: Any, only_if_revision: Any) -> None:
    """Raise ValueError for bad ``delete_job`` options."""
    if not isinstance(force, bool):
        raise ValueError(f"force must be True or False, got {force!r}")
    if only_if_revision is not None and (not isinstance(only_if_revision, int)
                                         or isinstance(only_if_revision, bool)):
        raise ValueError(f"only_if_revision must be an integer or None, got {only_if_revision!r}")


def check_flag(value: Any, what: str) -> bool:
    """Return ``value`` if it is True or False, else raise ValueError naming ``what``."""
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be True or False, got {value!r}")
    return value


def unlink(doc: dict, uuid: str) -> bool:
    """Remove ``uuid`` from the linkage fields of ``doc`` in place; True when it changed."""
    changed = False
    for field in LINKAGE_FIELDS:
        value = doc.get(field)
        if isinstance(value, list) and uuid in value:
            doc[field] = [v for v in value if v != uuid]
            changed = True
        elif value == uuid:  # a single reference kept as a scalar: drop the field
            del doc[field]
            changed = True
    return changed
