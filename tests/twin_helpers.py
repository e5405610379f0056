"""Twin jobs for the group-commit tests: pairs of jobs identical but for their uuid, so what one
side got one by one can be compared with what the other got in a batch."""
from __future__ import annotations

import json

from reactor.domain import records
from reactor.domain.identifiers import typed_uuid

GHOST = typed_uuid("pipelinejob", "no such job")
T1 = "2024-01-01T00:00:01.000Z"


def entry(name: str, key: str | None = None, data: dict | None = None) -> dict:
    """A history entry of event ``name`` at ``T1``."""
    return records.history_entry(name, data if data is not None else {"e": name}, T1, key)


def twins(jobs, count: int) -> tuple[list[str], list[str]]:
    """``count`` pairs of jobs identical but for their uuid (``a`` and ``b`` sides)."""
    a = [jobs.create(jobs.pipeline_uuid, data={"n": n, "side": "a"})[0]["uuid"]
         for n in range(count)]
    b = [jobs.create(jobs.pipeline_uuid, data={"n": n, "side": "b"})[0]["uuid"]
         for n in range(count)]
    return a, b


def same_shape(record: dict | None, uuid: str) -> dict | None:
    """A record with everything that differs between twins (uuid, data, entry ids) blanked."""
    if record is None:
        return None
    text = json.dumps(record, sort_keys=True).replace(uuid, "<job>")
    text = text.replace('"id:a-', '"id:').replace('"id:b-', '"id:')  # message ids per side
    out = json.loads(text)
    for name in ("data", "created", "updated"):  # twins differ in data and creation time
        out.pop(name)
    out["history"] = [{k: v for k, v in h.items() if k not in ("uuid", "date")}
                      for h in out["history"]]
    out["history"][0]["data"] = None  # the create entry holds the (different) job data
    return out

