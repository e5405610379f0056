"""Pure functions that build job records and history entries (no I/O)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from . import lifecycle
from .identifiers import history_uuid

LINKAGE_FIELDS = ("child_of", "generated_by", "acted_on", "acted_using", "derived_from",
                  "derived_using")
JOB_LINKAGE_FIELDS = ("child_of", "generated_by", "acted_on", "acted_using")


def now_iso(moment: datetime | None = None) -> str:
    """UTC time at millisecond precision (what MongoDB keeps), as ISO-8601 with a Z."""
    m = (moment or datetime.now(timezone.utc)).astimezone(timezone.utc)
    # Formatted by hand: strftime costs several times more, and this runs once per event.
    return (f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:"
            f"{m.second:02d}.{m.microsecond // 1000:03d}Z")


def check_data(data: Any, what: str = "data") -> dict | None:
    """Return ``data`` if it is a JSON object (or None); else raise TypeError showing the fix."""
    if data is None or isinstance(data, dict):
        return data
    if isinstance(data, (set, frozenset)):
        # The replaced system's own documentation passes {'a message'}: braces without
        # "key: value" pairs make a set. Show the dict that was meant.
        items = sorted(data, key=repr)
        example = {"msg": items[0]} if len(items) == 1 else {"msg": items}
        raise TypeError(f"{what} must be a JSON object (a dict), not a set: braces without "
                        f"'key: value' pairs make a set; write {what}={example!r}")
    raise TypeError(
        f"{what} must be a JSON object (a dict) or None, not {type(data).__name__}; "
        f"wrap the value in a dict, e.g. {what}={{'msg': {data!r}}}")


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON-like value (dicts, lists, scalars); other objects are shared.

    Several times cheaper than ``copy.deepcopy``, which is built for arbitrary object graphs;
    anything that is not JSON is refused later by the store's check, copied or not."""
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [copy_json(v) for v in value]
    return value


def history_entry(event: str, data: dict | None, date: str, key: str | None = None, *,
                  copy: bool = True) -> dict:
    """One history entry ``{uuid, name, date, data[, key]}``; ``key`` is the duplicate key.
    ``copy=False``: ``data`` is a value nobody else holds (just decoded), used as it is."""
    entry = {"uuid": history_uuid(), "name": event, "date": date,
             "data": copy_json(data) if data is not None and copy else data}
    if key is not None:
        entry["key"] = key
    return entry


def new_job_record(*, uuid: str, pipeline_uuid: str, data: dict, date: str,
                   archive_path: str = "", archive_system: str = "", session: str = "",
                   agent: str = "", task: str = "", child_of: list | None = None,
                   acted_on: list | None = None, acted_using: list | None = None) -> dict:
    """A job in CREATED whose history holds its ``create`` entry (revision 1)."""
    return {
        "uuid": uuid, "pipeline_uuid": pipeline_uuid,
        "archive_path": archive_path, "archive_system": archive_system,
        "data": copy_json(data), "session": session, "agent": agent, "task": task,
        "child_of": list(child_of or []), "generated_by": [pipeline_uuid],
        "acted_on": list(acted_on or []), "acted_using": list(acted_using or []),
        "state": lifecycle.INITIAL_STATE, "last_event": "create",
        "created": date, "updated": date, "revision": 1, "_visible": True,
        "history": [history_entry("create", data, date)],
    }


def applied_keys(record: dict) -> set[str]:
    """Duplicate keys of every event already applied to ``record``."""
    return {h["key"] for h in record.get("history", ()) if h.get("key")}
